"""Delivering the outbox: claim a row, send it, record the attempt, decide what next.

How a row travels:

* ``enqueue(id)`` hands it to the ``notifications`` django-q2 cluster (its own
  queue and workers, so a message never waits behind a long check run): inside the
  transaction that wrote the row when the broker is that same database, so both
  commit or neither, and when that transaction commits otherwise (Redis).
* ``deliver(id)`` (the task) claims it with a conditional UPDATE that sets a lease,
  so two workers never send the same row. A worker that dies after claiming leaves
  a lease that expires; ``sweep()`` then hands the row out again.
* ``sweep()`` runs at the end of every periodic check (and on its own schedule in
  the notifications cluster): it merges many stuck alerts into one digest, probes a
  paused sender, and re-enqueues everything due (lost enqueues, dead workers,
  reschedules).

What each Telegram answer does to the row is decided here; what the answer *is* is
decided by the backend (``notifications.backends``). Every try leaves a
``NotificationAttempt`` staff can read.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from notifications import outbox, rate_limits, signals
from notifications.backends import get_backend
from notifications.backends.base import (
    BaseBackend,
    ChatMoved,
    RecipientUnreachable,
    Rejected,
    RetryLater,
    SendError,
    TokenRejected,
    Transient,
)
from notifications.models import (
    Audience,
    ChatMigration,
    Notification,
    NotificationAttempt,
    NotificationKind,
    NotificationStatus,
    SenderState,
)

logger = logging.getLogger("notifications")

Status = NotificationStatus
Outcome = NotificationAttempt.Outcome
TASK = "notifications.delivery.deliver"
SWEEP_BATCH = 500


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


# --- Handing rows to the worker ----------------------------------------------------------


def queue_task(notification_id: int) -> None:
    """Put ``deliver(notification_id)`` on the notifications cluster's queue; may raise."""
    from django_q.tasks import async_task

    async_task(TASK, notification_id, cluster=settings.NOTIFICATION_CLUSTER, group="notifications")


def enqueue(notification_id: int) -> None:
    """Queue ``deliver(notification_id)`` on the notifications cluster.

    Never raises: a message whose enqueue was lost (broker down, process killed) is
    still pending in the outbox and the next sweep sends it.
    """
    try:
        queue_task(notification_id)
    except Exception:
        logger.exception(
            "Could not enqueue notification %s; the next sweep will send it", notification_id
        )


def due_rows():
    """Rows a worker may claim now: pending and due, or claimed by a worker whose lease ran out."""
    now = timezone.now()
    return Notification.objects.filter(next_attempt_at__lte=now).filter(
        Q(status=Status.PENDING) | Q(status=Status.SENDING, lease_until__lt=now)
    )


def sweep() -> int:
    """Merge stuck alerts, then re-enqueue everything due. Returns how many were enqueued."""
    if not _may_send():
        return 0
    outbox.merge_stuck_alerts()
    ids = list(
        due_rows().order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    for notification_id in ids:
        enqueue(notification_id)
    if ids:
        logger.info("Notification sweep: %s due row(s) enqueued", len(ids))
    return len(ids)


def resend(notification_id: int) -> bool:
    """Staff: send a failed or given-up row again, from a clean slate of retries."""
    reopened = Notification.objects.filter(
        pk=notification_id, status__in=[Status.FAILED, Status.GIVEN_UP]
    ).update(
        status=Status.PENDING,
        attempts=0,
        next_attempt_at=timezone.now(),
        lease_until=None,
        claimed_by="",
    )
    if reopened:
        from django.db import transaction

        transaction.on_commit(lambda: enqueue(notification_id))
    return bool(reopened)


# --- The sender state: paused while Telegram rejects the token -------------------------------


def sending_paused() -> tuple[bool, str]:
    """For /healthz and the admin banner: (paused, why)."""
    row = SenderState.objects.filter(pk=1).values("paused", "reason").first()
    if not row:
        return False, ""
    return row["paused"], row["reason"]


def _pause(reason: str) -> None:
    SenderState.get()
    paused = SenderState.objects.filter(pk=1, paused=False).update(
        paused=True, reason=reason[:1000], paused_at=timezone.now(), last_probe_at=timezone.now()
    )
    if paused:
        logger.error(
            "Telegram rejected the bot token: sending is paused until a probe succeeds (%s)",
            reason,
        )


def _may_send(backend: BaseBackend | None = None) -> bool:
    """False while paused; while paused, one process at a time probes (getMe) to resume."""
    paused, _reason = sending_paused()
    if not paused:
        return True
    now = timezone.now()
    interval = timedelta(seconds=settings.NOTIFICATION_PROBE_INTERVAL_SECONDS)
    my_turn = (
        SenderState.objects.filter(pk=1, paused=True)
        .filter(Q(last_probe_at__isnull=True) | Q(last_probe_at__lte=now - interval))
        .update(last_probe_at=now)
    )
    if not my_turn:
        return False
    try:
        (backend or get_backend()).probe()
    except SendError as exc:
        SenderState.objects.filter(pk=1).update(reason=str(exc)[:1000])
        logger.error("Telegram still rejects the bot token: sending stays paused (%s)", exc)
        return False
    if SenderState.objects.filter(pk=1, paused=True).update(paused=False, reason=""):
        logger.warning("Telegram accepts the bot token again: sending resumed")
    return True


# --- Claiming -----------------------------------------------------------------------------------


def claim(notification_id: int, worker: str | None = None) -> Notification | None:
    """Take the row for this worker, with a lease; None if it is not due or another has it."""
    worker = worker or worker_name()
    now = timezone.now()
    won = (
        due_rows()
        .filter(pk=notification_id)
        .update(
            status=Status.SENDING,
            lease_until=now + timedelta(seconds=settings.NOTIFICATION_LEASE_SECONDS),
            claimed_by=worker,
        )
    )
    if not won:
        return None
    # An attempt left "in flight" by a worker that died: say so, for staff.
    NotificationAttempt.objects.filter(
        notification_id=notification_id, outcome=Outcome.IN_FLIGHT, finished_at__isnull=True
    ).update(
        finished_at=now,
        error="The worker stopped before recording Telegram's answer (lease expired); "
        "the message may or may not have arrived.",
    )
    return Notification.objects.select_related("owner").get(pk=notification_id)


def _mine(notification: Notification):
    """The row, only while this worker still holds it."""
    return Notification.objects.filter(
        pk=notification.pk, status=Status.SENDING, claimed_by=notification.claimed_by
    )


def _extend_lease(notification: Notification) -> bool:
    lease = timezone.now() + timedelta(seconds=settings.NOTIFICATION_LEASE_SECONDS)
    return bool(_mine(notification).update(lease_until=lease))


def _release(
    notification: Notification, *, after: float, error: str = "", failed: bool = False
) -> None:
    """Back to pending, due in ``after`` seconds (a failed attempt counts toward giving up)."""
    fields = {
        "status": Status.PENDING,
        "lease_until": None,
        "claimed_by": "",
        "next_attempt_at": timezone.now() + timedelta(seconds=after),
        "last_error": error[:2000],
    }
    if failed:
        fields["attempts"] = notification.attempts
    _mine(notification).update(**fields)


def _close(notification: Notification, status: str, **fields) -> bool:
    closed = _mine(notification).update(status=status, lease_until=None, **fields)
    if not closed:
        logger.warning(
            "Notification %s was taken over by another worker before we recorded %s",
            notification.pk,
            status,
        )
    return bool(closed)


# --- Sending ----------------------------------------------------------------------------------


def deliver(notification_id: int) -> str:
    """The django-q2 task: claim one row and send it. Returns what happened (for the task log)."""
    kind = Notification.objects.filter(pk=notification_id).values_list("kind", flat=True).first()
    if kind is None:
        return "no such notification"
    if kind == NotificationKind.STUCK:
        outbox.merge_stuck_alerts()
    backend = get_backend()
    if not _may_send(backend):
        return "paused"
    notification = claim(notification_id)
    if notification is None:
        return "not due or claimed elsewhere"
    return send_claimed(notification, backend)


def _resolve_chat(notification: Notification) -> int | None:
    chat_id = (
        settings.TELEGRAM_STAFF_CHAT_ID
        if notification.audience == Audience.STAFF
        else notification.chat_id
    )
    for _hop in range(5):  # follow migrations (a chain is possible, a loop is not)
        if chat_id is None:
            break
        moved = (
            ChatMigration.objects.filter(old_chat_id=chat_id)
            .values_list("new_chat_id", flat=True)
            .first()
        )
        if moved is None:
            break
        chat_id = moved
    return chat_id


def _sleep_if_short(notification: Notification, seconds: float) -> bool:
    """Wait inside the task when it is short; keep the lease. False: too long, hand back."""
    if seconds > settings.NOTIFICATION_INLINE_WAIT_SECONDS:
        return False
    time.sleep(max(0.0, seconds))
    return _extend_lease(notification)


def _backoff(failures: int) -> float:
    delay = settings.NOTIFICATION_RETRY_BASE_SECONDS * (2 ** max(0, failures - 1))
    return min(delay, settings.NOTIFICATION_RETRY_MAX_SECONDS)


class _NoSlot(Exception):
    """The rate limits want a longer wait than a task should sleep: hand the row back."""

    def __init__(self, wait: float):
        self.wait = wait


class _SlotTaker:
    """Called by the backend just before its request: reserve a rate-limit slot, open the attempt."""

    def __init__(self, notification: Notification, chat_id: int):
        self.notification = notification
        self.chat_id = chat_id
        self.attempt: NotificationAttempt | None = None

    def __call__(self) -> None:
        while (wait := rate_limits.reserve(self.chat_id)) > 0:
            if not _sleep_if_short(self.notification, wait):
                raise _NoSlot(wait)
        # Recorded before the request leaves: a worker that dies now leaves a trace.
        self.attempt = NotificationAttempt.objects.create(
            notification=self.notification,
            chat_id=self.chat_id,
            outcome=Outcome.IN_FLIGHT,
            worker=self.notification.claimed_by,
        )

    def attempt_for_record(self) -> NotificationAttempt:
        """The attempt to record an answer on (created now if the backend failed before)."""
        if self.attempt is None:
            self.attempt = NotificationAttempt.objects.create(
                notification=self.notification,
                chat_id=self.chat_id,
                outcome=Outcome.IN_FLIGHT,
                worker=self.notification.claimed_by,
            )
        return self.attempt


def send_claimed(notification: Notification, backend: BaseBackend | None = None) -> str:
    """Send a row this worker has claimed, following Telegram's answers to the end."""
    backend = backend or get_backend()
    migrated_once = False
    while True:
        chat_id = _resolve_chat(notification)
        if chat_id is None:
            _close(
                notification,
                Status.SKIPPED,
                last_error="TELEGRAM_STAFF_CHAT_ID is not set: staff alert recorded, not sent",
            )
            logger.warning("Staff alert %s not sent: no staff chat configured", notification.pk)
            return "skipped"
        owner = notification.owner
        if notification.audience == Audience.OWNER and owner is not None and not owner.reachable:
            _close(
                notification,
                Status.UNREACHABLE,
                last_error=f"Owner unreachable: {owner.unreachable_reason}",
            )
            return "owner unreachable"

        # The slot is taken at the last moment, once the HTTP client is ready, so that
        # the limits hold for requests as Telegram sees them, not for our intentions.
        slot = _SlotTaker(notification, chat_id)
        error: SendError | None = None
        try:
            receipt = backend.send(chat_id, notification.text, ready=slot)
        except _NoSlot as exc:
            _release(notification, after=exc.wait, error=notification.last_error)
            return f"rate limited for {exc.wait:.1f} s"
        except SendError as exc:
            error = exc
        except Exception as exc:  # a bug in a backend must not lose the row
            logger.exception("Unexpected error sending notification %s", notification.pk)
            error = Transient(f"{exc.__class__.__name__}: {exc}")
        attempt = slot.attempt_for_record()
        if error is None:
            now = timezone.now()
            _record(attempt, Outcome.SENT, telegram_message_id=receipt.message_id)
            _close(
                notification,
                Status.SENT,
                sent_at=now,
                chat_id=chat_id,
                telegram_message_id=receipt.message_id,
                last_error="",
            )
            logger.info(
                "Notification %s (%s) sent to chat %s", notification.pk, notification.kind, chat_id
            )
            return "sent"

        message = str(error)
        if isinstance(error, RetryLater):
            # Flood control is not a failure of this message: wait, do not count it.
            _record(attempt, Outcome.RETRY_AFTER, error=message)
            if _sleep_if_short(notification, error.retry_after):
                continue
            _release(notification, after=error.retry_after, error=message)
            return f"flood control: retry in {error.retry_after:g} s"

        if isinstance(error, ChatMoved):
            _record(attempt, Outcome.MIGRATED, error=message)
            ChatMigration.objects.update_or_create(
                old_chat_id=chat_id, defaults={"new_chat_id": error.new_chat_id}
            )
            logger.warning(
                "Chat %s migrated to %s: stored, resending once", chat_id, error.new_chat_id
            )
            if migrated_once:
                _close(notification, Status.FAILED, last_error=message)
                return "failed: migrated twice"
            migrated_once = True
            continue

        if isinstance(error, RecipientUnreachable):
            _record(attempt, Outcome.UNREACHABLE, error=message)
            _close(notification, Status.UNREACHABLE, last_error=message)
            _mark_unreachable(notification, message)
            return "unreachable"

        if isinstance(error, TokenRejected):
            # Not this message's fault: back to pending, due at once after resume.
            _record(attempt, Outcome.INVALID_TOKEN, error=message)
            _pause(message)
            _release(notification, after=0, error=message)
            return "paused: token rejected"

        if isinstance(error, Rejected):
            _record(attempt, Outcome.BAD_REQUEST, error=message)
            if _close(notification, Status.FAILED, last_error=message):
                logger.error("Telegram rejected notification %s: %s", notification.pk, message)
                _alert_staff(notification, message)
            return "failed"

        # Transient (timeouts, connection errors, 5xx) and anything unexpected.
        _record(
            attempt,
            Outcome.TRANSIENT if isinstance(error, Transient) else Outcome.ERROR,
            error=message,
        )
        notification.attempts += 1
        if notification.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS:
            if _close(
                notification, Status.GIVEN_UP, attempts=notification.attempts, last_error=message
            ):
                logger.error(
                    "Gave up on notification %s after %s attempts: %s",
                    notification.pk,
                    notification.attempts,
                    message,
                )
                _alert_staff(notification, message)
            return "given up"
        delay = _backoff(notification.attempts)
        _mine(notification).update(attempts=notification.attempts, last_error=message[:2000])
        if _sleep_if_short(notification, delay):
            continue
        _release(notification, after=delay, error=message, failed=True)
        return f"transient error, retry in {delay:g} s"


def _record(attempt: NotificationAttempt, outcome: str, **fields) -> None:
    signals.send_recorded.send(sender=NotificationAttempt, outcome=outcome)
    NotificationAttempt.objects.filter(pk=attempt.pk).update(
        outcome=outcome, finished_at=timezone.now(), **fields
    )


def _mark_unreachable(notification: Notification, reason: str) -> None:
    if notification.audience == Audience.STAFF:
        logger.error("The staff chat cannot be reached by the bot: %s", reason)
        return
    from monitoring.models import Owner

    Owner.objects.filter(pk=notification.owner_id, reachable=True).update(
        reachable=False, unreachable_reason=reason[:255], unreachable_since=timezone.now()
    )
    logger.info("Owner %s marked unreachable: %s", notification.owner_id, reason)


def _alert_staff(notification: Notification, error: str) -> None:
    """Tell staff about an owner message we could not deliver (never about a staff one)."""
    if notification.audience == Audience.OWNER:
        outbox.queue_given_up(notification, error)
