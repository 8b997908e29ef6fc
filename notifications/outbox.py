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

    With ``savepoint`` (the default) a duplicate key is logged and skipped without
    breaking the caller's transaction. Without it, a duplicate raises and takes the
    caller's transaction with it: for callers that are the only possible writer of
    their key, where two round trips per message are worth saving.

    A row due now is written marked as having its task (``queued_at``), so the relay
    never queues a second one. A row held back (a stuck alert waiting for its digest),
    or written while sending is paused (a task would only find the pause), is left to
    the relay, which queues it when it is due and sending has resumed.
    """
    now = timezone.now()
    due_now = fields.setdefault("next_attempt_at", now) <= now and not _paused()
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


def _paused() -> bool:
    return SenderState.objects.filter(pk=1, paused=True).exists()


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
    """The owner's message for a finished training attempt (ready, failed, cancelled).

    The training's ``owner_message`` (chosen from fal's answer, or by staff) picks the
    text. "No message" still writes the row, as skipped with the reason: the outcome
    has exactly one notification either way, and staff can see why nobody was told.

    ``training`` comes with its avatar and owner loaded (the transition has just read
    them): the outbox reads nothing of the monitoring app itself. ``fal_finished_at``
    (when fal finished the job) is kept in the context: the sender measures from it
    how long the owner waited to be told (``signals.owner_told``).
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


def queue_stuck(*, training: Any, episode: int, reason: str = "") -> Notification | None:
    """One staff alert per stuck episode of a training (passed with its avatar loaded).

    ``reason`` is the cause in the staff chat's language (kept in the context for a
    digest); without it the alert quotes the training's stored reason.

    Held back a few seconds (NOTIFICATION_STUCK_HOLD_SECONDS) so that a check run
    flagging many trainings at once ends up as one digest (``merge_stuck_alerts``).
    """
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
    """Staff alert: fal rejected our key (401) or locked the account (403).

    One per hour and status code, so a minute-by-minute check does not flood the chat.
    """
    hour = timezone.now().strftime("%Y%m%d%H")
    return _create_once(
        dedup_key=f"fal_account:{status_code}:{hour}",
        kind=NotificationKind.FAL_ACCOUNT,
        audience=Audience.STAFF,
        text=messages.render_fal_account_message(status_code, detail),
        context={"status_code": status_code},
    )


def queue_fal_record_alert(
    *, dedup_key: str, text: str, avatar=None, training=None, context: dict | None = None
) -> Notification | None:
    """Staff alert about fal's own record (a double submit, a lost submit given up,
    requests billed that nobody follows). The caller writes the text (Telegram HTML)
    and picks the key that makes it "once"."""
    return _create_once(
        dedup_key=dedup_key[:200],
        kind=NotificationKind.FAL_RECORD,
        audience=Audience.STAFF,
        avatar=avatar,
        training=training,
        text=text[: messages.MAX_TEXT],
        context=context or {},
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
    """Staff alert: an avatar's files could not be kept (too large, gone at fal, given up).

    The caller (``monitoring.files``) writes the text and picks the key that makes it "once".
    """
    return _create_once(
        dedup_key=dedup_key[:200],
        kind=NotificationKind.FILES,
        audience=Audience.STAFF,
        avatar_id=avatar_id,
        training_id=training_id,
        text=text[: messages.MAX_TEXT],
        context=context or {},
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
    """Staff alert: many attempts retried after fal's failures.

    One per episode: none while the last one is less than an hour old (the window the
    share is measured over), and at most one per clock hour when two retries race.
    """
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


# --- Issue 29 hook (notifications.progress): progress messages off, one plain note -------


def late_key(training_id: int) -> str:
    return f"late:{training_id}"


def queue_owner_late(
    *, training_id: int, chat_id: int, text: str, owner_id=None, avatar_id=None
) -> Notification | None:
    """Owner: "taking longer than usual", once per attempt (progress messages off)."""
    return _create_once(
        dedup_key=late_key(training_id),
        kind=NotificationKind.LATE,
        audience=Audience.OWNER,
        training_id=training_id,
        owner_id=owner_id,
        avatar_id=avatar_id,
        chat_id=chat_id,
        text=text[: messages.MAX_TEXT],
    )


def schedule_delivery(notification_id: int, *, in_transaction: bool = False) -> None:
    """Hand a row to the sender's queue.

    After commit this never raises (the relay is the net); inside the row's own
    transaction an error propagates, as that transaction is broken anyway.
    """
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
    """Queue ``deliver(notification_id)`` on the notifications cluster.

    Never raises: a message whose enqueue was lost (broker down, process killed) is
    still pending in the outbox, marked as having no task, and the relay sends it.
    """
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
