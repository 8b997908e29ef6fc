"""Telegram's reasons for not delivering a message, in the reader's language (unknown
texts stay as Telegram wrote them).
"""

from __future__ import annotations

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

# Our own reasons, stored as a notification's ``last_error`` in English (the msgid) and
# worded for the reader by ``last_error_words``.
NO_STAFF_CHAT = gettext_noop("TELEGRAM_STAFF_CHAT_ID is not set: staff alert recorded, not sent")
MIGRATED_TWICE = gettext_noop("chat migrated twice in one send")
OWNER_UNREACHABLE = "Owner unreachable: "

# Telegram's answers when an owner cannot be messaged (Bot API 403 descriptions).
_TELEGRAM_REASONS = {
    "Forbidden: bot was blocked by the user": gettext_lazy("the owner blocked the bot"),
    "Forbidden: user is deactivated": gettext_lazy("the owner's Telegram account is deleted"),
    "Forbidden: bot can't initiate conversation with a user": gettext_lazy(
        "the owner never started the bot"
    ),
    "Forbidden: bot was kicked from the group chat": gettext_lazy(
        "the bot was removed from the chat"
    ),
    "Forbidden: bot was kicked from the supergroup chat": gettext_lazy(
        "the bot was removed from the chat"
    ),
}


def telegram_reason_words(text: str) -> str:
    """Telegram's known "cannot message" reasons in the reader's language; others as written."""
    words = _TELEGRAM_REASONS.get(text.strip())
    return str(words) if words is not None else text


def last_error_words(text: str) -> str:
    """A stored send error in the reader's language where it is one of ours."""
    if text in (NO_STAFF_CHAT, MIGRATED_TWICE):
        return _(text)
    if text.startswith(OWNER_UNREACHABLE):
        return _("Owner unreachable: %(reason)s") % {
            "reason": telegram_reason_words(text[len(OWNER_UNREACHABLE) :])
        }
    return telegram_reason_words(text)
