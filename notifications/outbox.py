"""Writing messages into the outbox.

Called by ``monitoring.transitions`` inside the transaction that wins a status
change, so the message exists if and only if the change does. The unique
``dedup_key`` makes a second row for the same outcome impossible whatever path
tries to write it.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction

from notifications import messages
from notifications.models import Audience, Notification, NotificationKind

logger = logging.getLogger("notifications")

_OUTCOME_KINDS = {
    "completed": NotificationKind.READY,
    "error": NotificationKind.FAILED,
    "cancelled": NotificationKind.CANCELLED,
}


def _create_once(**fields) -> Notification | None:
    """Insert unless the dedup key exists; never breaks the caller's transaction."""
    try:
        with transaction.atomic():
            notification = Notification.objects.create(**fields)
    except IntegrityError:
        return None
    transaction.on_commit(lambda: schedule_delivery(notification.pk))
    return notification


def queue_outcome(*, training_id: int, outcome: str) -> Notification | None:
    """The owner's message for a finished training attempt (ready, failed, cancelled)."""
    from monitoring.models import Training

    training = Training.objects.select_related("avatar__owner").get(pk=training_id)
    avatar = training.avatar
    kind = _OUTCOME_KINDS[outcome]
    return _create_once(
        dedup_key=f"{kind}:{training.pk}",
        kind=kind,
        audience=Audience.OWNER,
        owner=avatar.owner,
        avatar=avatar,
        training=training,
        chat_id=avatar.owner.telegram_id,
        text=messages.render_owner_message(kind, training),
    )


def queue_stuck(*, training_id: int, episode: int) -> Notification | None:
    """One staff alert per stuck episode of a training."""
    from monitoring.models import Training

    training = Training.objects.select_related("avatar__owner").get(pk=training_id)
    return _create_once(
        dedup_key=f"stuck:{training.avatar_id}:{training.pk}:{episode}",
        kind=NotificationKind.STUCK,
        audience=Audience.STAFF,
        avatar=training.avatar,
        training=training,
        text=messages.render_stuck_message(training),
    )


def schedule_delivery(notification_id: int) -> None:
    """Hand a committed row to the sender (replaced by the delivery module)."""
    try:
        from notifications import delivery
    except ImportError:  # delivery not built yet: the periodic sweep picks rows up
        return
    delivery.enqueue(notification_id)


def queue_fal_account_alert(*, status_code: int, detail: str) -> Notification | None:
    """Staff alert: fal rejected our key (401) or locked the account (403).

    One per hour and status code, so a minute-by-minute check does not flood the chat.
    """
    from django.utils import timezone

    hour = timezone.now().strftime("%Y%m%d%H")
    return _create_once(
        dedup_key=f"fal_account:{status_code}:{hour}",
        kind=NotificationKind.FAL_ACCOUNT,
        audience=Audience.STAFF,
        text=messages.render_fal_account_message(status_code, detail),
    )
