"""Message texts: Telegram HTML with every interpolated value escaped (avatar names are
user input). Owners get Russian or English, never internal details (fal codes, request
ids); staff messages go to one staff chat, in Russian like the operator log lines.
Telegram's reasons for not delivering a message are worded in the reader's language
(unknown texts stay as Telegram wrote them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import translation
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop, pgettext_lazy

from avatarsite.log_redaction import redact
from notifications.models import NotificationKind, OwnerMessage

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


# Telegram refuses longer texts.
MAX_TEXT = 4096

_TYPE_NAMES = {
    "portrait": pgettext_lazy("owner message", "portrait"),
    "style": pgettext_lazy("owner message", "style"),
}

_OWNER_TEXTS: dict[str, Promise] = {
    NotificationKind.READY: gettext_lazy(
        "🎉 Your avatar is ready!\n\n<b>{name}</b> ({type}) is trained and ready to use: "
        "{how_to_use}"
    ),
    NotificationKind.FAILED: gettext_lazy(
        "😔 We could not train your avatar <b>{name}</b> ({type}).\n\n{reason}\n{next_step}"
    ),
    NotificationKind.CANCELLED: gettext_lazy(
        "Training of your avatar <b>{name}</b> ({type}) was cancelled. "
        "You can start it again whenever you like."
    ),
    NotificationKind.DELAYED: gettext_lazy(
        "⏳ Training your avatar <b>{name}</b> ({type}) is taking longer than usual. We "
        "are keeping an eye on it and will message you as soon as it is done."
    ),
}

# Why a training failed and what to do about it, by ``OwnerMessage`` (never guessed from
# the error text).
_FAILURE_REASONS: dict[str, tuple[Promise, Promise]] = {
    OwnerMessage.PHOTOS: (
        gettext_lazy("Reason: the uploaded photos could not be processed."),
        gettext_lazy(
            "Please upload another set (10–20 sharp photos of the face in good light) "
            "and start the training again."
        ),
    ),
    OwnerMessage.TECHNICAL: (
        gettext_lazy("Reason: the training service had a problem; your photos are fine."),
        gettext_lazy("We are aware of it. Please try starting the training again a little later."),
    ),
    OwnerMessage.FAL_FAILURE: (
        gettext_lazy(
            "Reason: the training service failed on its side; your photos are fine. We "
            "already tried again for you, and you were not charged for these attempts."
        ),
        gettext_lazy("Please try starting the training again a little later."),
    ),
    OwnerMessage.UNKNOWN: (
        gettext_lazy("Reason: an error happened during training."),
        gettext_lazy(
            "Please try starting the training again. If it happens again, contact support."
        ),
    ),
}


def _how_to_use(avatar_id: int) -> str:
    link = getattr(settings, "OWNER_BOT_LINK", None)
    if not link:
        return _("open the bot and choose it to create photos.")
    href = escape(link.replace("{avatar_id}", str(avatar_id)), quote=True)
    return _('open <a href="{link}">the bot</a> and create photos.').format(link=href)


def owner_language(language: str) -> str:
    return language if language in ("ru", "en") else "ru"


def render_owner_message(kind: str, training, *, owner_message: str | None = None) -> str:
    """The owner's text; for a failure, the reason of ``owner_message`` (else the training's)."""
    avatar = training.avatar
    with translation.override(owner_language(avatar.owner.language)):
        values = {
            "name": escape(avatar.name),
            "type": escape(str(_TYPE_NAMES.get(avatar.training_type, avatar.training_type))),
            "reason": "",
            "next_step": "",
            "how_to_use": _how_to_use(avatar.pk) if kind == NotificationKind.READY else "",
        }
        if kind == NotificationKind.FAILED:
            chosen = owner_message or getattr(training, "owner_message", "") or OwnerMessage.UNKNOWN
            reason, next_step = _FAILURE_REASONS.get(chosen, _FAILURE_REASONS[OwnerMessage.UNKNOWN])
            values["reason"], values["next_step"] = str(reason), str(next_step)
        return str(_OWNER_TEXTS[kind]).format(**values)[:MAX_TEXT]


STAFF_LANGUAGE = "ru"


def admin_url(view: str, *args: Any, query: str = "") -> str:
    """An absolute admin URL on PUBLIC_BASE_URL ("" when it is not set: no link)."""
    base = getattr(settings, "PUBLIC_BASE_URL", None)
    return f"{base.rstrip('/')}{reverse(view, args=args)}{query}" if base else ""


def _link(url: str, text: str) -> str:
    return f'<a href="{escape(url, quote=True)}">{escape(text)}</a>' if url else escape(text)


def avatar_ref(avatar_id: int) -> str:
    return _link(admin_url("admin:monitoring_avatar_change", avatar_id), f"#{avatar_id}")


def avatar_link_line(avatar_id: int | None) -> str:
    url = admin_url("admin:monitoring_avatar_change", avatar_id) if avatar_id else ""
    return f"\n{_link(url, f'Открыть аватар #{avatar_id}')}" if url else ""


def _stuck_list_line() -> str:
    url = admin_url("admin:monitoring_avatar_changelist", query="?stuck=yes")
    return f"\n{_link(url, 'Все зависшие обучения')}" if url else ""


def _stuck_line(training, reason: str = "") -> str:
    avatar = training.avatar
    return (
        f"• {avatar_ref(avatar.pk)} <b>{escape(avatar.name)}</b> "
        f"(<code>{escape(training.fal_request_id or '—')}</code>): "
        f"{escape(reason or training.stuck_reason)}"
    )


def render_stuck_message(training, reason: str = "") -> str:
    """``reason``: the cause in Russian (``monitoring.stuck``); else the stored reason."""
    return f"⚠️ Обучение зависло\n{_stuck_line(training, reason)}{_stuck_list_line()}"[:MAX_TEXT]


def render_stuck_digest(trainings: Sequence[tuple[Any, str]]) -> str:
    """``trainings``: (training, its reason in Russian or "" for the stored one) pairs."""
    header = f"⚠️ Зависли обучения: {len(trainings)}\n"
    footer = _stuck_list_line()
    lines: list[str] = []
    size = len(header) + len(footer)
    for index, (training, reason) in enumerate(trainings):
        line = _stuck_line(training, reason)
        rest = f"\n… и ещё {len(trainings) - index}"
        if size + len(line) + 1 + len(rest) > MAX_TEXT:
            lines.append(rest.strip())
            break
        lines.append(line)
        size += len(line) + 1
    return header + "\n".join(lines) + footer


def render_fal_balance_message(
    *,
    balance: str | None,
    read_at: datetime | None,
    alert_usd: str,
    hold_usd: str,
    spent_day: str,
    hours_left: float | None,
    holding: bool,
    locked_detail: str,
    held: int,
) -> str:
    """The one staff message of a balance episode (figures already formatted in USD)."""
    lines = []
    if locked_detail:
        lines.append(
            "🔒 fal отказал в запуске (403): аккаунт заблокирован.\n"
            f"<code>{escape(redact(locked_detail)[:300])}</code>"
        )
    if balance is not None:
        when = f" (на {read_at:%H:%M} UTC)" if read_at else ""
        lines.append(
            f"💸 Баланс fal: <b>{escape(balance)}</b>{when}; порог оповещения {alert_usd}."
        )
    else:
        lines.append("💸 Баланс fal неизвестен.")
    if hours_left is not None:
        lines.append(
            f"За сутки потрачено {spent_day}: при таком темпе хватит на ~{hours_left:.1f} ч."
        )
    if holding or locked_detail:
        lines.append(
            f"Новые запуски ждут пополнения (ниже {hold_usd} fal блокирует аккаунт); "
            f"ждут: {held}. Владельцам ничего не пишем."
        )
    lines.append("Пополните баланс fal.")
    return "\n".join(lines)[:MAX_TEXT]


def render_given_up_message(notification, error: str) -> str:
    """In the staff chat's language; an unknown Telegram text is quoted as code."""
    with translation.override(STAFF_LANGUAGE):
        kind = str(notification.get_kind_display())
        why = telegram_reason_words(error[:500])
    recipient = escape(str(notification.owner)) if notification.owner_id else "чата сотрудников"
    why_html = f"<code>{escape(why)}</code>" if why == error[:500] else escape(why)
    number = _link(
        admin_url("admin:notifications_notification_change", notification.pk),
        f"#{notification.pk}",
    )
    return (
        f"📭 Уведомление {number} ({escape(kind)}) для {recipient} не доставлено: {why_html}"
        f"{avatar_link_line(notification.avatar_id)}"
    )[:MAX_TEXT]


_PROGRESS_TEXTS = {
    "queue": gettext_lazy("⏳ Training «<b>{name}</b>»: in line, {ahead} ahead of you."),
    "next": gettext_lazy("⏳ Training «<b>{name}</b>»: in line, you are next."),
    "run": gettext_lazy("🏋️ Training «<b>{name}</b>»: training now."),
    "late": gettext_lazy(
        "🐢 Training «<b>{name}</b>»: taking longer than usual. "
        "We will write as soon as it is ready."
    ),
    "retry": gettext_lazy("🔁 Training «<b>{name}</b>»: fal had a hiccup, starting again."),
    "eta": gettext_lazy("Ready in about {minutes} min ({low}–{high} min)."),
    "eta_soon": gettext_lazy("Ready any minute now."),
    "retried_note": gettext_lazy("(fal had a hiccup; we started it again.)"),
    "completed": gettext_lazy("✅ Training «<b>{name}</b>»: done."),
    "error": gettext_lazy("Training «<b>{name}</b>»: did not succeed."),
    "cancelled": gettext_lazy("Training «<b>{name}</b>»: cancelled."),
}


def _minutes(seconds: float) -> int:
    return max(1, round(seconds / 60))


def render_progress(snapshot: Any, now: datetime) -> str:
    """The text of a ``progress.Snapshot``: its phase (queue, run, late, retry; or the last
    line: completed, error, cancelled), place in line and ETA, in the owner's language."""
    phase = snapshot.phase
    with translation.override(owner_language(str(snapshot.context.get("language")))):
        texts = {key: str(text) for key, text in _PROGRESS_TEXTS.items()}
    key = "next" if phase == "queue" and not snapshot.position else phase
    name = escape(str(snapshot.context.get("name", "")))
    line = texts[key].format(name=name, ahead=snapshot.position or 0)
    if phase in ("queue", "run", "retry") and (eta_at := snapshot.eta_at) is not None:
        left = (eta_at - now).total_seconds()
        if left < 90:
            line += "\n" + texts["eta_soon"]
        else:
            low = _minutes(((snapshot.eta_low or eta_at) - now).total_seconds())
            high = _minutes(((snapshot.eta_high or eta_at) - now).total_seconds())
            line += "\n" + texts["eta"].format(minutes=_minutes(left), low=low, high=high)
    if snapshot.context.get("retried") and phase in ("queue", "run", "late"):
        line += "\n" + texts["retried_note"]
    return line[:MAX_TEXT]
