"""Message texts (HTML, every interpolated value escaped), by the owner's language."""

from __future__ import annotations

from html import escape

from notifications.models import NotificationKind

_OWNER_TEXTS = {
    "ru": {
        NotificationKind.READY: "🎉 Ваш аватар «{name}» готов! Тип: {type}.",
        NotificationKind.FAILED: "😔 Не удалось обучить аватар «{name}». Попробуйте загрузить другие фото.",
        NotificationKind.CANCELLED: "Обучение аватара «{name}» отменено.",
    },
    "en": {
        NotificationKind.READY: "🎉 Your avatar “{name}” is ready! Type: {type}.",
        NotificationKind.FAILED: "😔 We could not train your avatar “{name}”. Please try other photos.",
        NotificationKind.CANCELLED: "Training of your avatar “{name}” was cancelled.",
    },
}


def render_owner_message(kind: str, training) -> str:
    avatar = training.avatar
    texts = _OWNER_TEXTS.get(avatar.owner.language, _OWNER_TEXTS["ru"])
    return texts[kind].format(name=escape(avatar.name), type=escape(avatar.training_type))


def render_stuck_message(training) -> str:
    avatar = training.avatar
    return (
        f"⚠️ Training stuck: avatar #{avatar.pk} «{escape(avatar.name)}», "
        f"request {escape(training.fal_request_id or '-')}: {escape(training.stuck_reason)}"
    )


def render_fal_account_message(status_code: int, detail: str) -> str:
    return f"🚨 fal answered {status_code}: {escape(detail)[:500]}"
