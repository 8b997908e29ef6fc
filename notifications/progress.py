"""The owner's live progress message: sent once, silently, then edited in place, at a
lower priority than the outbox. The monitor passes a ``Snapshot`` (``notifications``
never imports ``monitoring``). See docs/eta.md (the owner's progress message).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.tasks import async_task

from notifications import messages, rate_limits
from notifications.backends import base
from notifications.models import (
    Audience,
    Notification,
    NotificationStatus,
    ProgressMessage,
    ProgressState,
    UnreachableChat,
)

logger = logging.getLogger("notifications")

TASK = "notifications.progress.push"
State = ProgressState
LEASE = timedelta(seconds=60)
# How long a progress edit steps aside while outcome messages are due.
YIELD_SECONDS = 2.0
# The last line waits for the outcome message; after this long it goes anyway.
OUTCOME_WAIT = timedelta(minutes=10)
SWEEP_BATCH = 200
# An ETA move smaller than this is not worth an edit, whatever its share.
MIN_MOVE = timedelta(minutes=2)
OUTCOME_PHASES = ("completed", "error", "cancelled")
FINAL_AT = "final_at"
RETRIED = "retried"


@dataclass(frozen=True)
class Basis:
    phase: str
    eta_at: datetime | None


def wants_edit(sent: Basis, now_basis: Basis, now: datetime) -> bool:
    """Whether the message must change: a new phase, or an ETA moved by > 1/5 and ≥ 2 min."""
    if sent.phase != now_basis.phase:
        return True
    if sent.eta_at is None or now_basis.eta_at is None:
        return sent.eta_at != now_basis.eta_at
    moved = abs(now_basis.eta_at - sent.eta_at)
    left = max(timedelta(0), sent.eta_at - now)
    return moved >= MIN_MOVE and moved > left / 5


@dataclass(frozen=True)
class Snapshot:
    """A training as the monitor sees it now (built by ``monitoring.owner_progress``)."""

    training_id: int
    chat_id: int
    phase: str  # queue, run, late, retry
    context: dict[str, Any] = field(default_factory=dict)  # name, language
    position: int | None = None
    eta_at: datetime | None = None
    eta_low: datetime | None = None
    eta_high: datetime | None = None


def update_many(
    snapshots: list[Snapshot], *, now: datetime | None = None
) -> dict[int, ProgressMessage]:
    """The trainings moved: create their messages, or note the text an edit should carry
    (for a check batch: one read, one insert for the new messages)."""
    now = now or timezone.now()
    if not settings.OWNER_PROGRESS_MESSAGES or not snapshots:
        # Off: a late training's owner hears it once from monitoring.owner_progress.
        return {}
    rows = {
        row.training_id: row
        for row in ProgressMessage.objects.filter(
            training_id__in=[snapshot.training_id for snapshot in snapshots]
        )
    }
    new: list[ProgressMessage] = []
    for snapshot in snapshots:
        row = rows.get(snapshot.training_id)
        if row is None:
            new.append(
                ProgressMessage(
                    training_id=snapshot.training_id,
                    chat_id=snapshot.chat_id,
                    text=messages.render_progress(snapshot, now),
                    phase=snapshot.phase,
                    eta_at=snapshot.eta_at,
                    context=snapshot.context,
                    next_at=now,
                )
            )
            continue
        if row.context.get(RETRIED):  # every later text still says so
            snapshot = replace(snapshot, context={**snapshot.context, RETRIED: True})
        if row.final or row.state not in (State.NEW, State.LIVE):
            continue
        # Judged against what the message is about to say (waiting to go, or on Telegram).
        fresh = Basis(snapshot.phase, snapshot.eta_at)
        if row.state == State.LIVE and not wants_edit(Basis(row.phase, row.eta_at), fresh, now):
            continue
        _schedule(
            ProgressMessage.objects.filter(final=False),
            row,
            now,
            text=messages.render_progress(snapshot, now),
            phase=snapshot.phase,
            eta_at=snapshot.eta_at,
        )
    created = _create(new) if new else []
    rows.update((row.training_id, row) for row in created)
    if created:
        transaction.on_commit(partial(enqueue, *[row.pk for row in created]))
    return rows


def _create(rows: list[ProgressMessage]) -> list[ProgressMessage]:
    """Insert new messages at once; one by one when another path created one meanwhile."""
    try:
        with transaction.atomic():
            return ProgressMessage.objects.bulk_create(rows)
    except IntegrityError:
        created = []
        for row in rows:
            row.pk = None
            try:
                with transaction.atomic():
                    row.save(force_insert=True)
            except IntegrityError:
                continue
            created.append(row)
        return created


def retried(old_training_id: int, snapshot: Snapshot) -> None:
    """fal failed and a new attempt starts: the same message, now about the new attempt."""
    row = ProgressMessage.objects.filter(training_id=old_training_id, final=False).first()
    if row is None:
        return
    ProgressMessage.objects.filter(pk=row.pk).update(
        training_id=snapshot.training_id, context={**row.context, RETRIED: True}
    )
    update_many([snapshot])


def finish(training_id: int, outcome: str, *, now: datetime | None = None) -> None:
    """The outcome is known: an unsent message never goes; a live one gets its last line."""
    now = now or timezone.now()
    row = ProgressMessage.objects.filter(training_id=training_id, final=False).first()
    if row is None:
        return
    if row.state == State.NEW:
        ProgressMessage.objects.filter(pk=row.pk, state=State.NEW).update(
            state=State.SKIPPED, final=True, pending=False
        )
        return
    # A first send still in flight gets its last line too, once it has landed.
    if row.state not in (State.LIVE, State.SENDING) or outcome not in OUTCOME_PHASES:
        ProgressMessage.objects.filter(pk=row.pk).update(final=True, pending=False)
        return
    text = messages.render_progress(Snapshot(training_id, row.chat_id, outcome, row.context), now)
    _schedule(
        ProgressMessage.objects,
        row,
        now,
        final=True,
        text=text,
        phase=outcome,
        eta_at=None,
        context={**row.context, FINAL_AT: now.isoformat()},
    )


def _schedule(rows: Any, row: ProgressMessage, now: datetime, **fields: Any) -> None:
    """Save ``fields`` to be sent OWNER_PROGRESS_EDIT_SECONDS after the last edit, or now."""
    interval = timedelta(seconds=settings.OWNER_PROGRESS_EDIT_SECONDS)
    not_before = max(now, row.last_edit_at + interval) if row.last_edit_at else now
    rows.filter(pk=row.pk).update(pending=True, next_at=not_before, **fields)
    if not_before <= now:
        transaction.on_commit(partial(enqueue, row.pk))


def enqueue(*progress_ids: int) -> None:
    """Queue ``push`` for each message on one broker connection; never raises (the sweep's net)."""
    try:
        broker = get_broker(settings.NOTIFICATION_CLUSTER)
        for progress_id in progress_ids:
            async_task(
                TASK,
                progress_id,
                cluster=settings.NOTIFICATION_CLUSTER,
                group="progress",
                broker=broker,
            )
    except Exception:
        logger.exception("Could not queue progress messages %s; the sweep will", progress_ids)


def _due(now: datetime) -> Any:
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    return ProgressMessage.objects.filter(
        free, pending=True, next_at__lte=now, state__in=[State.NEW, State.LIVE]
    )


def _save(row: ProgressMessage, **fields: Any) -> None:
    ProgressMessage.objects.filter(pk=row.pk).update(**{"lease_until": None, **fields})


def _later(row: ProgressMessage, seconds: float, error: str = "", first: bool = False) -> None:
    fields: dict[str, Any] = {"next_at": timezone.now() + timedelta(seconds=seconds)}
    if error:
        fields["last_error"] = error[:2000]
    if first:  # the first send never left: it may still go
        fields["state"] = State.NEW
    _save(row, **fields)


def _outcome_out(row: ProgressMessage, now: datetime) -> bool:
    """Whether the outcome message has gone (or will not): the last line may follow it."""
    if not Notification.objects.filter(
        training_id=row.training_id,
        audience=Audience.OWNER,
        status__in=[NotificationStatus.PENDING, NotificationStatus.SENDING],
    ).exists():
        return True
    final_at = row.context.get(FINAL_AT)
    return isinstance(final_at, str) and now - datetime.fromisoformat(final_at) > OUTCOME_WAIT


def push(progress_id: int) -> str:
    now = timezone.now()
    if not _due(now).filter(pk=progress_id).update(lease_until=now + LEASE):
        return "not due"
    row = ProgressMessage.objects.get(pk=progress_id)
    if row.final and not _outcome_out(row, now):
        _later(row, YIELD_SECONDS * 5)
        return "waiting for the outcome message"
    reason = UnreachableChat.objects.filter(chat_id=row.chat_id).values_list("reason", flat=True)
    if reason.exists():
        _save(row, state=State.STOPPED, pending=False, last_error=f"unreachable: {reason[0]}")
        return "owner unreachable"
    busy = Notification.objects.filter(status=NotificationStatus.PENDING, next_attempt_at__lte=now)
    if busy.exists():
        _later(row, YIELD_SECONDS)
        return "yielding to the outbox"
    first = row.state == State.NEW
    if first:
        # In flight from here: a worker that dies now never sends it again.
        _save(row, state=State.SENDING, lease_until=now + LEASE)
    ready = partial(rate_limits.take, row.chat_id)
    try:
        if first:
            receipt = base.get_backend().send(row.chat_id, row.text, ready=ready, silent=True)
        else:
            assert row.message_id is not None
            receipt = base.get_backend().edit(row.chat_id, row.message_id, row.text, ready=ready)
    except rate_limits.NoSlot as exc:
        _later(row, exc.wait, first=first)
        return f"rate limited for {exc.wait:.1f} s"
    except base.RetryLater as exc:
        _later(row, exc.retry_after, str(exc), first)
        return f"flood control: retry in {exc.retry_after:g} s"
    except base.TokenRejected as exc:
        _later(row, settings.NOTIFICATION_PROBE_INTERVAL_SECONDS or 60, str(exc), first)
        return "token rejected"
    except base.RecipientUnreachable as exc:
        UnreachableChat.objects.get_or_create(
            chat_id=row.chat_id, defaults={"reason": str(exc)[:255]}
        )
        return _stop(row, str(exc))
    except (base.MessageGone, base.Rejected) as exc:
        return _stop(row, str(exc))
    except base.SendError as exc:
        return _unknown(row, first, str(exc))
    except Exception as exc:  # a bug in a backend: treat as unknown, never resend blindly
        logger.exception("Progress message %s: unexpected error", row.pk)
        return _unknown(row, first, f"{exc.__class__.__name__}: {exc}")
    _save(
        row,
        state=State.DONE if row.final else State.LIVE,
        message_id=receipt.message_id if first else row.message_id,
        sent_text=row.text,
        sent_phase=row.phase,
        sent_eta_at=row.eta_at,
        # Counted from Telegram's answer, so that two edits are at least the interval
        # apart as Telegram receives them.
        last_edit_at=timezone.now(),
        edits=row.edits + (0 if first else 1),
        last_error="",
    )
    # The text changed while this one was in flight: the newer one is still to go.
    ProgressMessage.objects.filter(pk=row.pk, text=row.text).update(pending=False)
    return "sent" if first else "edited"


def _stop(row: ProgressMessage, error: str) -> str:
    _save(row, state=State.STOPPED, pending=False, last_error=error[:2000])
    logger.info("Progress message %s stopped: %s", row.pk, error)
    return "stopped"


def _unknown(row: ProgressMessage, first: bool, error: str) -> str:
    if first:
        # It may have arrived: a second message would be worse than none.
        _save(row, state=State.DROPPED, pending=False, last_error=error[:2000])
        return "dropped: first send's outcome unknown"
    if row.final:
        _save(row, state=State.DONE, pending=False, last_error=error[:2000])
        return "last line's outcome unknown"
    # Superseded by the next edit (the text stays pending).
    _later(row, settings.OWNER_PROGRESS_EDIT_SECONDS, error)
    return "edit's outcome unknown"


def sweep() -> int:
    """Push every progress message that is due (the net under the queued tasks)."""
    now = timezone.now()
    due = list(_due(now).order_by("next_at").values_list("pk", flat=True)[:SWEEP_BATCH])
    for progress_id in due:
        push(progress_id)
    return len(due)


def after_outcome_told(sender: object, notification: Notification, **kwargs: Any) -> None:
    """``delivery.owner_told`` receiver: the outcome went out, the last line may follow."""
    if notification.training_id is None:  # its training was deleted since
        return
    rows = ProgressMessage.objects.filter(
        training_id=notification.training_id, final=True, pending=True
    )
    for row in rows:
        _schedule(rows, row, timezone.now())
