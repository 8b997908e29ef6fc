"""Telegram's reasons for not delivering a message, in the reader's language.

Telegram answers in English ("Forbidden: bot was blocked by the user"); staff read the
admin and the staff chat in their own language. Unknown texts stay as Telegram wrote
them.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy

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
