"""Owners who come back, and the one meaning of "an owner message was not delivered".
See docs/owner-messages.md#owners-who-blocked-the-bot.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import F, QuerySet

from notifications import delivery
from notifications.models import (
    Audience,
    Notification,
    NotificationKind,
    NotificationStatus,
    UnreachableChat,
)

logger = logging.getLogger("notifications")

UNDELIVERED_STATUSES = (
    NotificationStatus.FAILED,
    NotificationStatus.GIVEN_UP,
    NotificationStatus.UNREACHABLE,
)
# How a training ended: what an owner must hear ("taking longer" is no news once it ended).
OUTCOME_KINDS = (NotificationKind.READY, NotificationKind.FAILED, NotificationKind.CANCELLED)


def undelivered_owner_messages() -> QuerySet[Notification]:
    """Owner outcome messages that did not arrive and are about the avatar's current attempt:
    the one definition behind the problems banner, the dashboard and the avatar filter."""
    return Notification.objects.filter(
        audience=Audience.OWNER,
        kind__in=OUTCOME_KINDS,
        status__in=UNDELIVERED_STATUSES,
        training_id=F("avatar__current_training_id"),
    )


def undelivered_count() -> int:
    """Avatars whose owner was not told about the current attempt (one query)."""
    return undelivered_owner_messages().values("avatar_id").distinct().count()


def is_unreachable(chat_id: int | None) -> bool:
    return chat_id is not None and UnreachableChat.objects.filter(chat_id=chat_id).exists()


def reachable_again(chat_id: int, *, why: str) -> list[int]:
    """Forget that ``chat_id`` was unreachable and resend what was held back for it; returns
    the ids queued again (none when the chat was not marked unreachable)."""
    with transaction.atomic():
        forgotten, _rows = UnreachableChat.objects.filter(chat_id=chat_id).delete()
        if not forgotten:
            return []
        held = list(
            undelivered_owner_messages()
            .filter(chat_id=chat_id, status=NotificationStatus.UNREACHABLE)
            .order_by("created_at", "pk")
            .values_list("pk", flat=True)
        )
        resent = [pk for pk in held if delivery.resend(pk)]
    logger.info(
        "Chat %s is reachable again (%s): %s held message(s) queued again",
        chat_id,
        why,
        len(resent),
    )
    return resent
