"""Writing messages into the outbox.

Called by ``monitoring.transitions`` inside the transaction that wins a status
change, so the message exists if and only if the change does. The unique
``dedup_key`` makes a second row for the same outcome impossible whatever path
tries to write it. Delivery is handed to the worker with the transaction (see
``_hand_over``); a lost hand-over is picked up by the next sweep.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, router, transaction
from django.utils import timezone
from django_q.conf import Conf
from django_q.tasks import async_task

from notifications import messages
from notifications.models import (
    Audience,
    Notification,
    NotificationKind,
    NotificationStatus,
    OwnerMessage,
    SenderState,
)

logger = logging.getLogger("notifications")

TASK = "notifications.delivery.deliver"

_OUTCOME_KINDS = {
    "completed": NotificationKind.READY,
    "error": NotificationKind.FAILED,
    "cancelled": NotificationKind.CANCELLED,
}


def _create_once(*, savepoint: bool = True, **fields) -> Notification | None:
    """Insert unless the dedup key exists, and hand the row to the sender.

    ``savepoint=False`` (for the only possible writer of a key) saves two round trips;
    a duplicate then breaks the caller's transaction. A row due now is written marked
    as having its task; one held back or written while paused is left to the relay.
    """
    now = timezone.now()
    due_now = (
        fields.setdefault("next_attempt_at", now) <= now
        and not SenderState.objects.filter(pk=1, paused=True).exists()
    )
    if due_now:
        fields["queued_at"] = now
    if savepoint:
        try:
            with transaction.atomic():
                notification = Notification.objects.create(**fields)
        except IntegrityError:
            logger.info("Notification %s already exists: not written twice", fields["dedup_key"])
            return None
    else:
        notification = Notification.objects.create(**fields)
    if due_now:
        _hand_over(notification.pk)
    return notification


def _broker_shares_transaction() -> bool:
    """Whether the task queue is a table in this database and a transaction is open."""
    alias = router.db_for_write(Notification)
    return Conf.ORM == alias and not transaction.get_autocommit(using=alias)


def _hand_over(notification_id: int) -> None:
    """Queue the row's delivery so that it runs only once the row is committed."""
    if _broker_shares_transaction():
        # The task row joins the message's transaction: both commit or neither, and
        # the hand-over costs no commit of its own. A failure here means the
        # database failed, and the transaction with it.
        schedule_delivery(notification_id, in_transaction=True)
    else:
        transaction.on_commit(lambda: schedule_delivery(notification_id))


# The context key of an owner's outcome message that says when fal finished the job.
FAL_FINISHED_AT = "fal_finished_at"


def _owner_kind(outcome: str, owner_message: str) -> str:
    """The notification kind: the outcome's, unless the owner is told "we cancelled it"."""
    if outcome == "error" and owner_message == OwnerMessage.CANCELLED:
        return NotificationKind.CANCELLED
    return _OUTCOME_KINDS[outcome]


def queue_outcome(
    *, training: Any, outcome: str, fal_finished_at: datetime | None = None
) -> Notification | None:
    """The owner's message for a finished attempt, picked by its ``owner_message``.

    "No message" still writes the row, as skipped: one notification per outcome either
    way. ``fal_finished_at`` is kept so the sender measures how long the owner waited.
    """
    avatar = training.avatar
    owner_message = getattr(training, "owner_message", "") or ""
    kind = _owner_kind(outcome, owner_message)
    context: dict[str, Any] = {"owner_message": owner_message} if owner_message else {}
    if fal_finished_at is not None:
        context[FAL_FINISHED_AT] = fal_finished_at.isoformat()
    fields = {
        "dedup_key": f"{kind}:{training.pk}",
        "kind": kind,
        "audience": Audience.OWNER,
        "owner": avatar.owner,
        "avatar": avatar,
        "training": training,
        "chat_id": avatar.owner.telegram_id,
        "text": messages.render_owner_message(kind, training),
        "context": context,
    }
    if owner_message == OwnerMessage.NONE:
        # Recorded, never sent: the winner of the transition is still its only writer.
        return Notification.objects.create(
            **{
                **fields,
                "status": NotificationStatus.SKIPPED,
                "context": {**context, "skipped": "staff_chose_no_message"},
            }
        )
    # The winner of the transition is the only writer of this key: no savepoint.
    return _create_once(savepoint=False, **fields)


def delayed_key(avatar_id: int, episode_start_id: int) -> str:
    return f"delayed:{avatar_id}:{episode_start_id}"


def queue_delayed(*, training: Any, episode_start_id: int) -> Notification | None:
    """The owner's one "taking longer than usual" message for a training episode (the
    attempt and its automatic retries): the key makes a second one impossible."""
    avatar = training.avatar
    return _create_once(
        dedup_key=delayed_key(avatar.pk, episode_start_id),
        kind=NotificationKind.DELAYED,
        audience=Audience.OWNER,
        owner=avatar.owner,
        avatar=avatar,
        training=training,
        chat_id=avatar.owner.telegram_id,
        text=messages.render_owner_message(NotificationKind.DELAYED, training),
    )


def queue_stuck(*, training: Any, episode: int, reason: str = "") -> Notification | None:
    """One staff alert per stuck episode, held back a few seconds so that a check run
    flagging many trainings at once ends up as one digest (``merge_stuck_alerts``)."""
    hold = timedelta(seconds=settings.NOTIFICATION_STUCK_HOLD_SECONDS)
    return _create_once(
        dedup_key=f"stuck:{training.avatar_id}:{training.pk}:{episode}",
        kind=NotificationKind.STUCK,
        audience=Audience.STAFF,
        avatar=training.avatar,
        training=training,
        text=messages.render_stuck_message(training, reason),
        context={"episode": episode, **({"reason": reason} if reason else {})},
        next_attempt_at=timezone.now() + hold,
    )


def merge_stuck_alerts() -> Notification | None:
    """Many pending stuck alerts → one digest; the merged rows say where they went.

    Rows being sent by a worker are locked or no longer pending and are skipped, so
    an alert is either sent on its own or in exactly one digest.
    """
    with transaction.atomic():
        rows = list(
            Notification.objects.select_for_update(skip_locked=True)
            .filter(kind=NotificationKind.STUCK, status=NotificationStatus.PENDING, attempts=0)
            .order_by("pk")
        )
        if len(rows) < settings.NOTIFICATION_STUCK_DIGEST_MIN:
            return None
        ordered = [
            (row.training, str(row.context.get("reason") or ""))
            for row in Notification.objects.filter(pk__in=[r.pk for r in rows])
            .select_related("training__avatar")
            .order_by("pk")
            if row.training is not None
        ]
        ids = [row.pk for row in rows]
        digest = Notification.objects.create(
            dedup_key=f"stuck_digest:{ids[0]}-{ids[-1]}:{len(ids)}",
            kind=NotificationKind.STUCK_DIGEST,
            audience=Audience.STAFF,
            text=messages.render_stuck_digest(ordered),
            context={"merged": ids},
            queued_at=timezone.now(),
        )
        Notification.objects.filter(pk__in=ids, status=NotificationStatus.PENDING).update(
            status=NotificationStatus.MERGED,
            context={"merged_into": digest.pk},
            last_error="",
        )
        _hand_over(digest.pk)
    logger.info("%s stuck alerts merged into digest notification %s", len(ids), digest.pk)
    return digest


def queue_given_up(notification: Notification, error: str) -> Notification | None:
    """Staff alert: an owner's message could not be delivered (given up or rejected)."""
    attempts = notification.attempt_log.count()
    return _create_once(
        dedup_key=f"given_up:{notification.pk}:{attempts}",
        kind=NotificationKind.GIVEN_UP,
        audience=Audience.STAFF,
        owner=notification.owner,
        avatar=notification.avatar,
        training=notification.training,
        text=messages.render_given_up_message(notification, error),
        context={"notification": notification.pk},
    )


def queue_fal_account_alert(*, status_code: int, detail: str) -> Notification | None:
    """Staff alert: fal rejected our key (401) or locked the account (403); one an hour."""
    hour = timezone.now().strftime("%Y%m%d%H")
    return _create_once(
        dedup_key=f"fal_account:{status_code}:{hour}",
        kind=NotificationKind.FAL_ACCOUNT,
        audience=Audience.STAFF,
        text=messages.render_fal_account_message(status_code, detail),
        context={"status_code": status_code},
    )


def queue_fal_balance_alert(*, since: datetime, text: str, context: dict) -> Notification | None:
    """Staff alert: fal's balance is low, or fal locked the account; one per episode."""
    return _create_once(
        dedup_key=f"fal_balance:{since.isoformat()}",
        kind=NotificationKind.FAL_ACCOUNT,
        audience=Audience.STAFF,
        text=text[: messages.MAX_TEXT],
        context=context,
    )


def queue_fal_record_alert(
    *, dedup_key: str, text: str, training=None, context: dict | None = None
) -> Notification | None:
    """Staff alert about fal's own record (a double submit, a lost submit given up,
    requests billed that nobody follows)."""
    avatar = training.avatar if training else None
    return _written_alert(
        NotificationKind.FAL_RECORD,
        dedup_key,
        text,
        getattr(avatar, "pk", None),
        context,
        avatar=avatar,
        training=training,
    )


def _written_alert(kind: str, dedup_key: str, text: str, link_to, context, **fields):
    """A staff alert whose text (Telegram HTML) and "once" key the caller chose, with
    the link to the avatar (issue 31)."""
    return _create_once(
        dedup_key=dedup_key[:200],
        kind=kind,
        audience=Audience.STAFF,
        text=(text + messages.avatar_link_line(link_to))[: messages.MAX_TEXT],
        context=context or {},
        **fields,
    )


def queue_unsafe_result_alert(
    *, training_id: int, avatar_id: int, avatar_name: str, request_id: str, url: str
) -> Notification | None:
    """Staff alert: fal's result URL was not https, so the training was failed."""
    return _create_once(
        dedup_key=f"unsafe_result:{training_id}",
        kind=NotificationKind.UNSAFE_RESULT,
        audience=Audience.STAFF,
        avatar_id=avatar_id,
        training_id=training_id,
        text=messages.render_unsafe_result_message(
            avatar_id=avatar_id, avatar_name=avatar_name, request_id=request_id, url=url
        ),
        context={"url": url[:2048]},
    )


def queue_files_alert(
    *, dedup_key: str, text: str, avatar_id: int, training_id: int, context: dict | None = None
) -> Notification | None:
    """Staff alert: an avatar's files could not be kept (too large, gone at fal, given up)."""
    return _written_alert(
        NotificationKind.FILES,
        dedup_key,
        text,
        avatar_id,
        context,
        avatar_id=avatar_id,
        training_id=training_id,
    )


def queue_fal_outage_alert(*, since: datetime, failed: int, calls: int) -> Notification | None:
    """Staff alert: fal fails for everyone. One per episode (keyed by when it began)."""
    return _create_once(
        dedup_key=f"fal_outage:{since.isoformat()}",
        kind=NotificationKind.FAL_OUTAGE,
        audience=Audience.STAFF,
        text=messages.render_fal_outage_message(since, failed, calls),
        context={"since": since.isoformat(), "failed": failed, "calls": calls},
    )


def queue_retries_alert(*, now: datetime, retried: int, ended: int) -> Notification | None:
    """Staff alert: many attempts retried after fal's failures; none while the last is
    under an hour old (the share's window), one per clock hour when two retries race."""
    recent = Notification.objects.filter(
        kind=NotificationKind.RETRIES, created_at__gte=now - timedelta(hours=1)
    )
    if recent.exists():
        return None
    return _create_once(
        dedup_key=f"retries:{now:%Y-%m-%dT%H}",
        kind=NotificationKind.RETRIES,
        audience=Audience.STAFF,
        text=messages.render_retries_message(now, retried, ended),
        context={"retried": retried, "ended": ended},
    )


def schedule_delivery(notification_id: int, *, in_transaction: bool = False) -> None:
    """Hand a row to the sender's queue; raises only inside the row's own transaction."""
    if in_transaction:
        queue_task(notification_id)
    else:
        enqueue(notification_id)


# --- The queue ------------------------------------------------------------------------------
# Here rather than in ``delivery`` (which builds on the outbox): writing a row and
# queueing its task go together.


def queue_task(notification_id: int) -> None:
    """Put ``deliver(notification_id)`` on the notifications cluster's queue; may raise."""
    async_task(TASK, notification_id, cluster=settings.NOTIFICATION_CLUSTER, group="notifications")


def enqueue(notification_id: int) -> None:
    """Queue ``deliver(notification_id)``; never raises (a lost one is the relay's)."""
    try:
        queue_task(notification_id)
    except Exception:
        unqueue(notification_id)
        logger.exception(
            "Could not enqueue notification %s; the relay will send it", notification_id
        )


def unqueue(notification_id: int) -> None:
    """The row's task has run (or never made it to the queue): it has none waiting."""
    Notification.objects.filter(pk=notification_id, queued_at__isnull=False).update(queued_at=None)
