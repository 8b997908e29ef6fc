"""Delivering the outbox: claim a row, send it, record the attempt, decide what next
(``_ANSWERS``; what Telegram answered is the backend's to say); and the relay, a thread in
each notifications worker, one at a time under a lease, handing due rows to senders.
See docs/architecture.md#exactly-one-message-per-outcome and
docs/operations.md#pace-messages-and-checks-after-a-disturbance.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F, Q
from django.dispatch import Signal
from django.utils import timezone
from django_q.conf import Conf

from notifications import outbox, rate_limits
from notifications.backends import base
from notifications.messages import MIGRATED_TWICE, NO_STAFF_CHAT, OWNER_UNREACHABLE
from notifications.models import (
    INTERRUPTED_TWICE,
    Audience,
    ChatMigration,
    Notification,
    NotificationAttempt,
    NotificationKind,
    NotificationStatus,
    PauseCause,
    RateLimitMark,
    SenderState,
    UnreachableChat,
    backoff,
)

logger = logging.getLogger("notifications")

# What delivery announces (``monitoring`` connects receivers): the outcome of one Bot API
# call is recorded (``outcome``); an owner's message about a finished training is sent
# (``notification``, ``finished_at``: fal's end as the finish knew it, ``sent_at``).
send_recorded = Signal()
owner_told = Signal()
Status = NotificationStatus
Outcome = NotificationAttempt.Outcome
SWEEP_BATCH = 500
RELAY_LEASE = timedelta(seconds=2)
BACKLOG_POLL = 0.1  # seconds between relay passes while each pass finds work


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def relay_once() -> int:
    """Queue a task for each due row that has none, keeping the queue about one second of
    sending deep: a backlog goes out at full rate, and a new message waits behind at most
    that second. Rows whose task the broker lost are queued again first."""
    if not _may_send():
        return 0
    now = timezone.now()
    rows = Notification.objects
    rows.forget_lost_tasks(now, settings.NOTIFICATION_CLUSTER)
    waiting = rows.filter(queued_at__isnull=False).count()
    # One second of what the senders really manage (the slots taken in the last second),
    # not of the limit; at least two tasks per worker, at most the limit's second.
    floor = 2 * settings.NOTIFICATION_WORKERS
    depth = max(floor, math.ceil(settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND))
    if not settings.REDIS_URL:  # with Redis the marks are there: assume the limit is reached
        sent = RateLimitMark.objects.filter(sent_at__gte=now - timedelta(seconds=1)).count()
        depth = max(floor, min(depth, sent + settings.NOTIFICATION_WORKERS))
    return rows.queue_due(depth - waiting, now, outbox.enqueue)


def sweep() -> int:
    if not _may_send():
        return 0
    outbox.merge_stuck_alerts()
    now = timezone.now()
    Notification.objects.forget_lost_tasks(now, settings.NOTIFICATION_CLUSTER)
    queued = Notification.objects.queue_due(SWEEP_BATCH, now, outbox.enqueue)
    if queued:
        logger.info("Notification sweep: %s due row(s) enqueued", queued)
    return queued


def take_turn(me: str) -> bool:
    """Hold (or renew) the relay lease; False while another relay holds it."""
    SenderState.get()
    now = timezone.now()
    return bool(
        SenderState.objects.filter(pk=1)
        .filter(Q(relay_until__isnull=True) | Q(relay_until__lt=now) | Q(relay_owner=me))
        .update(relay_owner=me, relay_until=now + RELAY_LEASE)
    )


# The other outboxes' passes (the bot's event callbacks), registered by their apps.
_other_outboxes: list[Callable[[], int]] = []
_relay_started_in: int | None = None
_relay_lock = threading.Lock()


def register_outbox(other_relay_once: Callable[[], int]) -> None:
    if other_relay_once not in _other_outboxes:
        _other_outboxes.append(other_relay_once)


def run_relay() -> None:
    """The relay loop; one failed pass (database restarting, say) never ends it."""
    me = worker_name()
    logger.info("Notification relay started in %s", me)
    wait = settings.NOTIFICATION_RELAY_POLL_SECONDS
    while True:
        time.sleep(wait)
        try:
            close_old_connections()
            queued = take_turn(me) and (relay_once() + sum(other() for other in _other_outboxes))
            # While a backlog drains, top the queue up as soon as it has room.
            wait = BACKLOG_POLL if queued else settings.NOTIFICATION_RELAY_POLL_SECONDS
        except Exception:
            wait = settings.NOTIFICATION_RELAY_POLL_SECONDS
            logger.exception("Notification relay pass failed; trying again")


def start_relay(sender: object = None, **kwargs: object) -> None:
    """``post_spawn`` receiver: the relay thread, once per notifications worker process."""
    global _relay_started_in
    if Conf.CLUSTER_NAME != settings.NOTIFICATION_CLUSTER:
        return
    with _relay_lock:
        if _relay_started_in == os.getpid():
            return
        _relay_started_in = os.getpid()
    threading.Thread(target=run_relay, name="notification-relay", daemon=True).start()


def resend(notification_id: int) -> bool:
    """Send a failed, given-up or held-back (unreachable) row again, with fresh retries."""
    reopened = Notification.objects.filter(
        pk=notification_id, status__in=[Status.FAILED, Status.GIVEN_UP, Status.UNREACHABLE]
    ).update(
        status=Status.PENDING,
        attempts=0,
        next_attempt_at=timezone.now(),
        lease_until=None,
        claimed_by="",
        queued_at=timezone.now(),
    )
    if reopened:
        transaction.on_commit(lambda: outbox.enqueue(notification_id))
    return bool(reopened)


def sending_paused() -> tuple[bool, str]:
    """For /healthz: (paused, why)."""
    return SenderState.objects.filter(pk=1).values_list("paused", "reason").first() or (False, "")


def _pause(reason: str, cause: str = PauseCause.TOKEN) -> None:
    SenderState.get()
    if SenderState.objects.filter(pk=1, paused=False).update(
        paused=True,
        cause=cause,
        reason=reason[:1000],
        paused_at=timezone.now(),
        last_probe_at=timezone.now(),
    ):
        logger.error(
            "%s: sending is paused until a probe succeeds (%s)",
            "The Bot API fails for every message"
            if cause == PauseCause.OUTAGE
            else "Telegram rejected the bot token",
            reason,
        )


def _may_send(backend: base.BaseBackend | None = None) -> bool:
    """False while paused; while paused, one process at a time probes (getMe) to resume."""
    row = SenderState.objects.filter(pk=1).values("paused", "cause").first()
    if not row or not row["paused"]:
        return True
    now = timezone.now()
    probe_every = (
        settings.NOTIFICATION_OUTAGE_PROBE_SECONDS
        if row["cause"] == PauseCause.OUTAGE
        else settings.NOTIFICATION_PROBE_INTERVAL_SECONDS
    )
    my_turn = (
        SenderState.objects.filter(pk=1, paused=True)
        .filter(
            Q(last_probe_at__isnull=True)
            | Q(last_probe_at__lte=now - timedelta(seconds=probe_every))
        )
        .update(last_probe_at=now)
    )
    if not my_turn:
        return False
    try:
        (backend or base.get_backend()).probe()
    except base.SendError as exc:
        SenderState.objects.filter(pk=1).update(reason=str(exc)[:1000])
        logger.error("Telegram still fails the probe: sending stays paused (%s)", exc)
        return False
    if SenderState.objects.filter(pk=1, paused=True).update(
        paused=False, cause="", reason="", failure_streak=0
    ):
        # Messages that backed off before the pause began are due now, with the rest.
        waiting = Notification.objects.filter(
            status=Status.PENDING, attempts__gt=0, next_attempt_at__gt=now
        ).update(next_attempt_at=now)
        logger.warning(
            "Telegram answers again: sending resumed (%s backed-off message(s) due now)", waiting
        )
    return True


def _note_transient(reason: str) -> bool:
    """Count a transient failure; True when sending is (now) paused as a Bot API outage."""
    SenderState.get()
    SenderState.objects.filter(pk=1).update(failure_streak=F("failure_streak") + 1)
    paused, streak = SenderState.objects.filter(pk=1).values_list("paused", "failure_streak").get()
    if not paused and streak >= settings.NOTIFICATION_OUTAGE_FAILURES:
        _pause(f"{streak} sends in a row failed; the last: {reason}", PauseCause.OUTAGE)
        return True
    return paused


def claim(notification_id: int, worker: str | None = None) -> Notification | None:
    notification = Notification.objects.select_related("owner").claim(
        notification_id,
        worker=worker or worker_name(),
        lease_seconds=settings.NOTIFICATION_LEASE_SECONDS,
    )
    if notification is None or not notification.interrupted:
        return notification
    if notification.status == Status.GIVEN_UP:
        logger.error("Notification %s: %s", notification.pk, INTERRUPTED_TWICE)
        outbox.queue_given_up(notification, INTERRUPTED_TWICE)
        return None
    logger.warning(
        "Notification %s: a worker died mid-send; sending it once more (may be a duplicate)",
        notification.pk,
    )
    return notification


def _held(done: bool, notification: Notification, what: str) -> bool:
    if not done:
        logger.warning(
            "Notification %s was taken over by another worker before we recorded %s",
            notification.pk,
            what,
        )
    return done


def _close(notification: Notification, status: str, **fields) -> bool:
    return _held(notification.close(status, **fields), notification, status)


def deliver(notification_id: int) -> str:
    """The django-q2 task: claim one row and send it. Returns what happened (for the task log)."""
    kind = Notification.objects.filter(pk=notification_id).values_list("kind", flat=True).first()
    if kind is None:
        return "no such notification"
    if kind == NotificationKind.STUCK:
        outbox.merge_stuck_alerts()
    backend = base.get_backend()
    if not _may_send(backend):
        outbox.unqueue(notification_id)
        return "paused"
    notification = claim(notification_id)
    if notification is None:
        outbox.unqueue(notification_id)
        return "not due or claimed elsewhere"
    for _try in range(2):  # a migrated chat is sent to once more, at its new id
        chat_id = _resolve_chat(notification)
        refusal = _refuse(notification, chat_id)
        if refusal or chat_id is None:
            return refusal
        # The slot is taken at the last moment, so the limits hold as Telegram sees them.
        opened: list[NotificationAttempt] = []
        try:
            receipt = backend.send(
                chat_id, notification.text, ready=partial(_take_slot, notification, chat_id, opened)
            )
        except rate_limits.NoSlot as exc:
            notification.release(after=exc.wait, error=notification.last_error)
            return f"rate limited for {exc.wait:.1f} s"
        except base.SendError as exc:
            error: base.SendError | None = exc
        except Exception as exc:  # a bug in a backend must not lose the row
            logger.exception("Unexpected error sending notification %s", notification.pk)
            error = base.Transient(f"{exc.__class__.__name__}: {exc}")
        else:
            error = None
        # Opened here when the backend failed before its request.
        attempt = opened[0] if opened else notification.open_attempt(chat_id=chat_id)
        if error is None:
            return _sent(notification, attempt, chat_id, receipt)
        handler = next(h for kind, h in _ANSWERS if isinstance(error, kind))
        outcome = handler(notification, attempt, chat_id, error)
        if outcome is not None:
            return outcome
    _close(notification, Status.FAILED, last_error=MIGRATED_TWICE)
    return "failed: migrated twice"


def _resolve_chat(notification: Notification) -> int | None:
    chat_id = (
        settings.TELEGRAM_STAFF_CHAT_ID
        if notification.audience == Audience.STAFF
        else notification.chat_id
    )
    migrations = ChatMigration.objects.values_list("new_chat_id", flat=True)
    for _hop in range(5):  # follow migrations (a chain is possible, a loop is not)
        moved = None if chat_id is None else migrations.filter(old_chat_id=chat_id).first()
        if moved is None:
            break
        chat_id = moved
    return chat_id


def _take_slot(notification: Notification, chat_id: int, opened: list) -> None:
    # Only the spacing between two sends (1/25 s) is slept here; a longer wait (a chat's
    # one-per-second, a group's per-minute) hands the row back.
    rate_limits.take(chat_id, settings.NOTIFICATION_INLINE_WAIT_SECONDS)
    opened.append(notification.open_attempt(chat_id=chat_id))


def _refuse(notification: Notification, chat_id: int | None) -> str:
    """Settle a row that must not be sent at all; "" when it may be."""
    if chat_id is None:
        _close(notification, Status.SKIPPED, last_error=NO_STAFF_CHAT)
        logger.warning("Staff alert %s not sent: no staff chat configured", notification.pk)
        return "skipped"
    if notification.audience == Audience.OWNER:
        reason = (
            UnreachableChat.objects.filter(chat_id=chat_id).values_list("reason", flat=True).first()
        )
        if reason is not None:
            _close(notification, Status.UNREACHABLE, last_error=f"{OWNER_UNREACHABLE}{reason}")
            return "owner unreachable"
    return ""


def _sent(
    notification: Notification,
    attempt: NotificationAttempt,
    chat_id: int,
    receipt: base.SendReceipt,
) -> str:
    sent_at = timezone.now()
    closed = _settle(
        notification,
        attempt,
        Outcome.SENT,
        attempt_fields={"telegram_message_id": receipt.message_id},
        close=Status.SENT,
        sent_at=sent_at,
        chat_id=chat_id,
        telegram_message_id=receipt.message_id,
    )
    # Only an owner's outcome message carries fal's end (``outbox.queue_outcome``).
    finished = notification.context.get(outbox.FAL_FINISHED_AT)
    if closed and finished:
        owner_told.send(
            sender=Notification,
            notification=notification,
            finished_at=datetime.fromisoformat(finished),
            sent_at=sent_at,
        )
    SenderState.objects.filter(pk=1, failure_streak__gt=0).update(failure_streak=0)
    logger.info("Notification %s (%s) sent to chat %s", notification.pk, notification.kind, chat_id)
    return "sent"


def _flood_control(notification, attempt, chat_id, error: base.SendError) -> str:
    assert isinstance(error, base.RetryLater)
    # Not a failure of this message: due again when Telegram says.
    _settle(
        notification, attempt, Outcome.RETRY_AFTER, error=str(error), retry_in=error.retry_after
    )
    return f"flood control: retry in {error.retry_after:g} s"


def _chat_moved(notification, attempt, chat_id, error: base.SendError) -> None:
    assert isinstance(error, base.ChatMoved)
    _settle(notification, attempt, Outcome.MIGRATED, error=str(error))
    ChatMigration.objects.update_or_create(
        old_chat_id=chat_id, defaults={"new_chat_id": error.new_chat_id}
    )
    logger.warning("Chat %s migrated to %s: stored, resending once", chat_id, error.new_chat_id)


def _unreachable(notification, attempt, chat_id, error: base.SendError) -> str:
    _settle(notification, attempt, Outcome.UNREACHABLE, error=str(error), close=Status.UNREACHABLE)
    if notification.audience == Audience.STAFF:
        logger.error("The staff chat cannot be reached by the bot: %s", error)
    else:
        UnreachableChat.objects.get_or_create(
            chat_id=chat_id, defaults={"reason": str(error)[:255]}
        )
        logger.info("Owner %s marked unreachable: %s", notification.owner_id, error)
    return "unreachable"


def _token_rejected(notification, attempt, chat_id, error: base.SendError) -> str:
    # Not this message's fault: back to pending, due at once after resume.
    _settle(notification, attempt, Outcome.INVALID_TOKEN, error=str(error), retry_in=0)
    _pause(str(error), PauseCause.TOKEN)
    return "paused: token rejected"


def _rejected(notification, attempt, chat_id, error: base.SendError) -> str:
    if _settle(notification, attempt, Outcome.BAD_REQUEST, error=str(error), close=Status.FAILED):
        logger.error("Telegram rejected notification %s: %s", notification.pk, error)
        outbox.queue_given_up(notification, str(error))
    return "failed"


def _transient(notification, attempt, chat_id, error: base.SendError) -> str:
    """Timeouts, connection errors, 5xx and anything unexpected."""
    message = str(error)
    outcome = Outcome.TRANSIENT if isinstance(error, base.Transient) else Outcome.ERROR
    if _note_transient(message):
        # The Bot API is down for everyone: not this message's failure.
        _settle(notification, attempt, outcome, error=message, retry_in=0)
        return "paused: Bot API outage"
    notification.attempts += 1
    if notification.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS:
        if _settle(
            notification,
            attempt,
            outcome,
            error=message,
            close=Status.GIVEN_UP,
            attempts=notification.attempts,
        ):
            logger.error(
                "Gave up on notification %s after %s attempts: %s",
                notification.pk,
                notification.attempts,
                message,
            )
            outbox.queue_given_up(notification, message)
        return "given up"
    delay = backoff(
        notification.attempts,
        settings.NOTIFICATION_RETRY_BASE_SECONDS,
        settings.NOTIFICATION_RETRY_MAX_SECONDS,
    )
    _settle(notification, attempt, outcome, error=message, retry_in=delay, failed=True)
    return f"transient error, retry in {delay:g} s"


# A handler records the attempt, settles the row, returns what happened (None: send again).
# In this order: the first class the error is an instance of decides.
_ANSWERS: list[tuple[type[base.SendError], Callable[..., str | None]]] = [
    (base.RetryLater, _flood_control),
    (base.ChatMoved, _chat_moved),
    (base.RecipientUnreachable, _unreachable),
    (base.TokenRejected, _token_rejected),
    (base.Rejected, _rejected),
    (base.SendError, _transient),
]


def _settle(
    notification: Notification, attempt: NotificationAttempt, outcome: str, **fields: Any
) -> bool:
    if "close" in fields:  # a closed row keeps its last attempt's error ("" once sent)
        fields.setdefault("last_error", fields.get("error", ""))
    send_recorded.send(sender=NotificationAttempt, outcome=outcome)
    return _held(notification.settle(attempt, outcome, **fields), notification, outcome)
