"""The one place that changes an avatar's status.

Each move is a conditional UPDATE naming the status it leaves; only the winner writes the
event and the outbox row. The allowed moves are ``ALLOWED_MOVES``.
See docs/architecture.md#statuses and #transitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import django.dispatch
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from avatarsite.log_redaction import redact, redact_value
from monitoring import owner_messages, totals, wording
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    FalStatus,
    Training,
    TrainingOutcome,
)
from notifications import outbox
from notifications.messages import STAFF_LANGUAGE
from notifications.models import OwnerMessage

logger = logging.getLogger("monitoring")

S = AvatarStatus
ALLOWED_MOVES: dict[str, frozenset[str]] = {
    S.DRAFT: frozenset({S.READY_FOR_TRAINING}),
    S.READY_FOR_TRAINING: frozenset({S.TRAINING}),
    S.TRAINING: frozenset({S.COMPLETED, S.ERROR, S.CANCELLED, S.READY_FOR_TRAINING}),
    S.COMPLETED: frozenset(),
    S.ERROR: frozenset({S.READY_FOR_TRAINING}),
    # Retrained: a cancelled avatar can be started again (a new attempt, history kept).
    S.CANCELLED: frozenset({S.READY_FOR_TRAINING}),
}
TERMINAL = frozenset({S.COMPLETED, S.ERROR, S.CANCELLED})

# Sent inside the transaction that finishes a training (``outcome`` is the avatar's new
# status) or flags it stuck, so that receivers (the API's event callbacks) write their
# rows with the change or not at all. Receivers get ``training`` (with avatar and owner).
training_finished = django.dispatch.Signal()
training_flagged_stuck = django.dispatch.Signal()
# Sent inside the transaction that retries an attempt; receivers get ``training`` (the
# attempt that failed, with avatar and owner) and ``retry`` (the new attempt).
training_retried = django.dispatch.Signal()
# Sent inside the transaction that records fal's acceptance of an attempt (its request
# id); receivers get ``training_id`` and ``source`` (the owner's progress message).
training_submitted = django.dispatch.Signal()


# ``Outcome.detail`` of a start held for fal's balance (``hold``).
HELD = "held"


class InvalidTransition(Exception):
    """A move that can never be valid, such as draft → completed."""

    def __init__(self, old: str, new: str):
        self.old, self.new = old, new
        super().__init__(f"An avatar cannot move from {old} to {new}")


@dataclass(frozen=True)
class Outcome:
    """What a transition did. ``changed`` is False for a no-op (already there, lost a race)."""

    changed: bool
    status: str
    detail: str = ""
    training: Training | None = None

    def __bool__(self) -> bool:
        return self.changed


def is_allowed(old: str, new: str) -> bool:
    return new in ALLOWED_MOVES.get(old, frozenset())


def _event(
    avatar_id: int,
    kind: str,
    source: str,
    *,
    training_id: int | None = None,
    actor: Any = None,
    old: str = "",
    new: str = "",
    message: str = "",
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AvatarEvent:
    return AvatarEvent.objects.create(
        avatar_id=avatar_id,
        training_id=training_id,
        kind=kind,
        source=source,
        actor=actor if getattr(actor, "pk", None) else None,
        old_status=old,
        new_status=new,
        # fal's texts reach the timeline here (and only here): never with a key in them.
        message=redact(message),
        details=redact_value(details or {}),
        created_at=at or timezone.now(),
    )


def _lost(avatar_id: int, target: str, training_id: int | None = None) -> Outcome:
    """Explain why a conditional UPDATE changed nothing, raising for impossible moves."""
    row = Avatar.objects.filter(pk=avatar_id).values("status", "current_training_id").first()
    if row is None:
        return Outcome(False, "", "avatar no longer exists")
    current = row["status"]
    if training_id is not None and row["current_training_id"] != training_id:
        return Outcome(False, current, "stale training attempt: the avatar has a newer one")
    if current == target:
        return Outcome(False, current, f"already {current}")
    if current in TERMINAL and not is_allowed(current, target):
        return Outcome(False, current, f"already {current}")
    if is_allowed(current, target):
        # The move is valid from here, so another condition (sub-state) did not hold.
        return Outcome(False, current, f"not possible now (avatar is {current})")
    raise InvalidTransition(current, target)


# --- Creation and preparation --------------------------------------------------------


def create_avatar(
    avatar: Avatar, *, ready: bool = True, source: str = EventSource.COMMAND, actor: Any = None
) -> Avatar:
    """Save a new ``avatar`` (``ready_for_training`` unless ``ready=False``), with its event."""
    with transaction.atomic():
        avatar.status = S.READY_FOR_TRAINING if ready else S.DRAFT
        avatar.save(force_insert=True)
        _event(avatar.pk, EventKind.CREATED, source, actor=actor, new=avatar.status)
    return avatar


def mark_ready(avatar: Avatar, *, source: str, actor: Any = None) -> Outcome:
    """draft → ready_for_training."""
    return _simple_move(avatar, S.DRAFT, S.READY_FOR_TRAINING, source=source, actor=actor)


RETRAINABLE = (S.ERROR, S.CANCELLED)


def retrain(avatar: Avatar, *, source: str = EventSource.STAFF, actor: Any = None) -> Outcome:
    """error or cancelled → ready_for_training. The ended attempt keeps its request id
    and history; the next start is a new attempt."""
    old = avatar.status if avatar.status in RETRAINABLE else S.ERROR
    return _simple_move(avatar, old, S.READY_FOR_TRAINING, source=source, actor=actor)


def _simple_move(avatar: Avatar, old: str, new: str, *, source: str, actor: Any) -> Outcome:
    with transaction.atomic():
        won = Avatar.objects.filter(pk=avatar.pk, status=old).update(
            status=new, updated_at=timezone.now()
        )
        if not won:
            return _lost(avatar.pk, new)
        _event(avatar.pk, EventKind.STATUS, source, actor=actor, old=old, new=new)
    avatar.status = new
    return Outcome(True, new)


# --- Training attempts ----------------------------------------------------------------


def _new_attempt(
    avatar_id: int,
    *,
    endpoint: str,
    arguments: dict[str, Any],
    webhook_url: str,
    fal_status: str,
    now: datetime,
) -> Training:
    """The avatar's next training attempt, now its current one (inside the caller's
    transaction, which holds the avatar's row)."""
    training = Training.objects.create(
        avatar_id=avatar_id,
        attempt=Training.objects.filter(avatar_id=avatar_id).count() + 1,
        endpoint=endpoint,
        arguments=arguments,
        webhook_url=webhook_url,
        fal_status=fal_status,
        created_at=now,
        # Checked soon in any case: a submit whose answer is lost must be seen.
        next_check_at=now,
    )
    Avatar.objects.filter(pk=avatar_id).update(current_training=training)
    return training


def begin_training(
    avatar: Avatar,
    *,
    endpoint: str,
    arguments: dict[str, Any],
    webhook_url: str,
    source: str,
    actor: Any = None,
) -> Outcome:
    """ready_for_training → training with a new attempt in sub-state SUBMITTING.

    Committed before anything is sent to fal, so a second click (or a second
    process) finds the avatar already training and never submits twice.
    """
    now = timezone.now()
    with transaction.atomic():
        won = Avatar.objects.filter(pk=avatar.pk, status=S.READY_FOR_TRAINING).update(
            status=S.TRAINING, updated_at=now
        )
        if not won:
            current = Avatar.objects.filter(pk=avatar.pk).values_list("status", flat=True).first()
            if current == S.TRAINING:
                return Outcome(False, current, "already training")
            return _lost(avatar.pk, S.TRAINING)
        training = _new_attempt(
            avatar.pk,
            endpoint=endpoint,
            arguments=arguments,
            webhook_url=webhook_url,
            fal_status=FalStatus.SUBMITTING,
            now=now,
        )
        training.avatar = avatar
        attempt = training.attempt
        _event(
            avatar.pk,
            EventKind.STATUS,
            source,
            training_id=training.pk,
            actor=actor,
            old=S.READY_FOR_TRAINING,
            new=S.TRAINING,
            details={"attempt": attempt, "endpoint": endpoint},
            at=now,
        )
    avatar.status = S.TRAINING
    avatar.current_training = training
    return Outcome(True, S.TRAINING, training=training)


def record_submitted(
    training: Training,
    *,
    request_id: str,
    status_url: str = "",
    response_url: str = "",
    cancel_url: str = "",
    queue_position: int | None = None,
    next_check_at: datetime | None = None,
    gateway_request_id: str = "",
    source: str,
    actor: Any = None,
    message: str = "",
    details: dict[str, Any] | None = None,
) -> bool:
    """SUBMITTING → IN_QUEUE with fal's request id, stored the moment fal answers.

    Also how a lost submit found in fal's record, or a request adopted from elsewhere,
    gets its request id (``message`` and ``details`` say so on the timeline).
    """
    now = timezone.now()
    with transaction.atomic():
        won = (
            Training.objects.active()
            .filter(pk=training.pk, fal_request_id__isnull=True)
            .update(
                fal_request_id=request_id,
                status_url=status_url,
                response_url=response_url,
                cancel_url=cancel_url,
                fal_status=FalStatus.IN_QUEUE,
                queue_position=queue_position,
                queue_position_first=queue_position,
                gateway_request_id=gateway_request_id[:128],
                submitted_at=now,
                next_check_at=next_check_at or now,
                check_failures=0,
                last_check_error="",
            )
        )
        if not won:
            return False
        _event(
            training.avatar_id,
            EventKind.SUBMITTED,
            source,
            training_id=training.pk,
            actor=actor,
            message=message,
            details={"request_id": request_id, "queue_position": queue_position, **(details or {})},
        )
        training_submitted.send(sender=Training, training_id=training.pk, source=source)
    training.fal_request_id = request_id
    training.fal_status = FalStatus.IN_QUEUE
    training.submitted_at = now
    logger.info(
        "✅ Мониторинг запущен для аватара %s (request_id=%s, endpoint=%s)",
        training.avatar_id,
        request_id,
        training.endpoint,
        extra={"avatar_id": training.avatar_id, "request_id": request_id},
    )
    return True


def hold(
    training: Training,
    *,
    reason: str,
    source: str,
    actor: Any = None,
    detail: str = "",
) -> Outcome:
    """SUBMITTING/NOT_SENT → HELD: nothing was sent, the start waits for fal's balance.

    The avatar stays ``training`` and nobody is told; the periodic check, the stuck
    flags, the lost-submit lookup and the restore leave a held attempt alone
    (``next_check_at`` is cleared). ``monitoring.billing`` sends it when the balance
    is back, oldest first.
    """
    now = timezone.now()
    with transaction.atomic():
        won = (
            Training.objects.active()
            .filter(pk=training.pk, fal_status=training.fal_status, fal_request_id__isnull=True)
            .update(
                fal_status=FalStatus.HELD,
                held_since=training.held_since or now,
                held_reason=reason,
                next_check_at=None,
                submit_unknown_since=None,
            )
        )
        if not won:
            return Outcome(False, S.TRAINING, "already sent", training)
        details = {"code": "held", "reason": reason, "detail": detail}
        _event(
            training.avatar_id,
            EventKind.NOTE,
            source,
            training_id=training.pk,
            actor=actor,
            message=wording.english(wording.note_words, details),
            details=details,
            at=now,
        )
    training.fal_status = FalStatus.HELD
    training.held_since = training.held_since or now
    training.held_reason = reason
    training.next_check_at = None
    logger.warning(
        "Start held for avatar %s (training %s): %s", training.avatar_id, training.pk, reason
    )
    return Outcome(True, S.TRAINING, HELD, training)


def record_note(
    training: Training,
    *,
    message: str,
    source: str,
    details: dict[str, Any] | None = None,
    actor: Any = None,
) -> AvatarEvent:
    """A timeline entry that changes no status (e.g. a submit whose answer was lost).

    ``details["code"]`` names the kind of note, so pages can word it in the reader's
    language; ``message`` is the English sentence for logs and the raw record.
    """
    return _event(
        training.avatar_id,
        EventKind.NOTE,
        source,
        training_id=training.pk,
        actor=actor,
        message=message,
        details=details,
    )


def refuse_submit(
    training: Training,
    *,
    error_type: str,
    error_message: str,
    source: str,
    actor: Any = None,
    outcome: str = TrainingOutcome.REFUSED,
) -> Outcome:
    """training (SUBMITTING, no job on fal) → ready_for_training: the avatar stays startable.

    fal refused the submit, or (``outcome=NO_FAL_JOB``) an Operator recorded that fal
    has no job for a submit whose answer was lost.
    """
    now = timezone.now()
    with transaction.atomic():
        won = Avatar.objects.filter(
            pk=training.avatar_id,
            status=S.TRAINING,
            current_training_id=training.pk,
            current_training__fal_request_id__isnull=True,
        ).update(status=S.READY_FOR_TRAINING, updated_at=now)
        if not won:
            return _lost(training.avatar_id, S.READY_FOR_TRAINING, training.pk)
        Training.objects.filter(pk=training.pk).update(
            finished_at=now,
            stuck_since=None,
            fal_status="",
            outcome=outcome,
            error_type=error_type,
            error_message=redact(error_message),
            next_check_at=None,
        )
        _event(
            training.avatar_id,
            EventKind.SUBMIT_REFUSED,
            source,
            training_id=training.pk,
            actor=actor,
            old=S.TRAINING,
            new=S.READY_FOR_TRAINING,
            message=error_message,
            details={"error_type": error_type, "outcome": outcome},
        )
    training.finished_at, training.outcome, training.fal_status = now, outcome, ""
    return Outcome(True, S.READY_FOR_TRAINING, training=training)


def record_fal_status(
    training: Training,
    *,
    fal_status: str,
    queue_position: int | None = None,
    source: str,
) -> bool:
    """A sub-state change seen on fal (IN_QUEUE → IN_PROGRESS); one event per change."""
    if fal_status == training.fal_status:
        return False
    now = timezone.now()
    updates: dict[str, Any] = {"fal_status": fal_status, "queue_position": queue_position}
    if fal_status == FalStatus.IN_PROGRESS and training.started_at is None:
        updates["started_at"] = now
    with transaction.atomic():
        won = (
            Training.objects.active()
            .filter(pk=training.pk, fal_status=training.fal_status)
            .update(**updates)
        )
        if not won:
            return False
        _event(
            training.avatar_id,
            EventKind.FAL_STATUS,
            source,
            training_id=training.pk,
            old=training.fal_status,
            new=fal_status,
        )
        if "started_at" in updates and training.submitted_at and source != EventSource.ADOPT:
            # Seen running for the first time: how long it waited in fal's queue.
            totals.observe(
                totals.FAL_QUEUE,
                {"trainer": training.endpoint},
                (now - training.submitted_at).total_seconds(),
            )
    for name, value in updates.items():
        setattr(training, name, value)
    return True


# --- Finishing ------------------------------------------------------------------------


def _already_finished(training: Training) -> Outcome:
    """What ``_lost`` would say of a finished attempt, from the avatar read with it."""
    avatar = training.avatar
    if avatar.current_training_id != training.pk:
        return Outcome(False, avatar.status, "stale training attempt: the avatar has a newer one")
    return Outcome(False, avatar.status, f"already {avatar.status}")


def _with_owner(training: Training) -> bool:
    """Whether ``training`` was loaded with its avatar and the avatar's owner."""
    return Training.avatar.is_cached(training) and Avatar.owner.is_cached(training.avatar)


def _finish(
    training: Training,
    *,
    new_status: str,
    outcome: str,
    fields: dict[str, Any],
    source: str,
    actor: Any,
    message: str,
    details: dict[str, Any],
    notify: bool = True,
    fal_finished_at: datetime | None = None,
) -> Outcome:
    if training.finished_at is not None and Training.avatar.is_cached(training):
        # An attempt that has finished never finishes again (finished_at is never
        # cleared), so a duplicate needs no UPDATE to be told so.
        return _already_finished(training)
    now = timezone.now()
    # The loser's explanation is read after the block, so that ``InvalidTransition``
    # never marks the caller's transaction as broken.
    with transaction.atomic():
        won = Avatar.objects.filter(
            pk=training.avatar_id, status=S.TRAINING, current_training_id=training.pk
        ).update(status=new_status, updated_at=now)
        if won:
            # Only the winner writes the rest: one event, one message. The avatar and
            # owner the message needs, and the stuck flag as it was (for the timeline),
            # are read once, under the avatar's row lock, unless the caller has just
            # read them (the webhook has, to find the training).
            if _with_owner(training):
                fresh = training
            else:
                fresh = Training.objects.select_related("avatar__owner").get(pk=training.pk)
            if fresh.stuck_since is not None:
                details = {**details, "was_stuck": fresh.stuck_reason}
            updates = {
                "finished_at": now,
                "outcome": outcome,
                "next_check_at": None,
                "stuck_since": None,
                "queue_position": None,
                # The sub-state describes an active attempt: cleared, unless the caller
                # records fal's own end (COMPLETED) in ``fields``.
                "fal_status": "",
                # fal's error text and raw result, as stored and shown: without keys.
                **redact_value(fields),
            }
            Training.objects.filter(pk=training.pk).update(**updates)
            for name, value in updates.items():
                setattr(fresh, name, value)
                setattr(training, name, value)
            fresh.avatar.status = new_status
            _event(
                training.avatar_id,
                EventKind.STATUS,
                source,
                training_id=training.pk,
                actor=actor,
                old=S.TRAINING,
                new=new_status,
                message=message,
                details=details,
                at=now,
            )
            # The API's event callbacks go whatever the owner is told (staff may have
            # chosen "no message"; an adopted job may have been told elsewhere).
            training_finished.send(sender=Training, training=fresh, outcome=new_status)
            if notify:
                # fal's end as the caller read it (its record), else when we learned it.
                outbox.queue_outcome(
                    training=fresh,
                    outcome=new_status,
                    fal_finished_at=min(fal_finished_at or now, now),
                )
            # Counted once the finish is committed, in a short transaction of its own:
            # every finish adds to the same few rows, and counting inside this one would
            # hold them locked (every other finish waiting) until its commit.
            transaction.on_commit(
                lambda: _count_finish(fresh, new_status, source, now), robust=True
            )
    if not won:
        return _lost(training.avatar_id, new_status, training.pk)
    return Outcome(True, new_status, training=training)


def _count_finish(training: Training, new_status: str, source: str, now: datetime) -> None:
    """The service-level figures of a committed finish (``/metrics``).

    A process that dies between the finish's commit and this loses one count: the
    figures, never the state.
    """
    started = None
    if new_status == S.COMPLETED and source != EventSource.ADOPT:
        # Only a ready avatar has a time to ready; an adopted job started elsewhere, so
        # its start here says nothing of the wait.
        started = _started_at(training)
    with totals.together():
        totals.add("finishes", {"learned_by": source, "outcome": new_status})
        if started is not None:
            totals.observe(
                totals.TIME_TO_READY,
                {"trainer": training.endpoint},
                (now - started).total_seconds(),
            )


def _started_at(training: Training) -> datetime | None:
    """When the attempt started: its ``created_at``, or, when the caller read the row
    without it (the webhook's lookup reads only what finishing needs), the timeline's
    move to training, written at the same instant: the training row is not read twice."""
    if "created_at" not in training.get_deferred_fields():
        return training.created_at
    return (
        AvatarEvent.objects.filter(
            training_id=training.pk, kind=EventKind.STATUS, new_status=S.TRAINING
        )
        .values_list("created_at", flat=True)
        .first()
    )


def complete(
    training: Training,
    *,
    lora_url: str,
    config_url: str = "",
    result: Any = None,
    source: str,
    actor: Any = None,
    details: dict[str, Any] | None = None,
    notify: bool = True,
    fal_finished_at: datetime | None = None,
) -> Outcome:
    """training → completed, storing the LoRA and config URLs and fal's raw result.

    ``notify=False`` (an adopted job that had finished elsewhere) writes no owner message.
    ``fal_finished_at`` (fal's record's ``ended_at``, when the caller read it) is where
    the owner-told figure starts (``totals.observe_owner_told``); else when we learned it.
    """
    outcome = _finish(
        training,
        new_status=S.COMPLETED,
        outcome=TrainingOutcome.COMPLETED,
        fields={
            "lora_url": lora_url,
            "config_url": config_url,
            "result": result,
            "fal_status": FalStatus.COMPLETED,
        },
        source=source,
        actor=actor,
        message="",
        details={"lora_url": lora_url, **(details or {})},
        notify=notify,
        fal_finished_at=fal_finished_at,
    )
    if outcome.changed:
        logger.info(
            "🎉 Обучение завершено для аватара %s (request_id=%s, source=%s)",
            training.avatar_id,
            training.fal_request_id,
            source,
            extra={"avatar_id": training.avatar_id, "request_id": training.fal_request_id},
        )
    return outcome


def fail(
    training: Training,
    *,
    error_message: str,
    error_type: str = "",
    details: dict[str, Any] | None = None,
    result: Any = None,
    source: str,
    actor: Any = None,
    notify: bool = True,
    owner_message: str = "",
    staff_note: str = "",
    fal_status: str | None = None,
    fal_finished_at: datetime | None = None,
) -> Outcome:
    """training → error, with fal's message and type (or ours, saying what we saw).

    ``owner_message`` (an ``OwnerMessage``) is what the owner is told; without it the
    table in ``monitoring.owner_messages`` picks it from ``error_type``. ``fal_status``
    is recorded with it when fal ended the job (COMPLETED: fal has no FAILED).
    """
    chosen = owner_message or owner_messages.owner_message_for(error_type=error_type)
    outcome = _finish(
        training,
        new_status=S.ERROR,
        outcome=TrainingOutcome.ERROR,
        fields={
            "error_type": error_type,
            "error_message": error_message,
            "result": result,
            "owner_message": chosen,
            "staff_note": staff_note,
            **({"fal_status": fal_status} if fal_status else {}),
        },
        source=source,
        actor=actor,
        message=error_message,
        details={"error_type": error_type, "owner_message": chosen, **(details or {})},
        notify=notify,
        fal_finished_at=fal_finished_at,
    )
    if outcome.changed:
        logger.warning(
            "❌ Обучение не удалось для аватара %s (request_id=%s, source=%s): %s %s",
            training.avatar_id,
            training.fal_request_id,
            source,
            error_type,
            error_message,
        )
    return outcome


def cancel_was_requested(training: Training) -> bool:
    """Whether staff asked fal to stop this attempt (read again: it may be recorded by
    another process while fal's failure is on its way)."""
    return training.cancel_requested_at is not None or (
        Training.objects.filter(pk=training.pk, cancel_requested_at__isnull=False).exists()
    )


def retry_attempt(
    training: Training,
    *,
    error_type: str,
    error_message: str,
    details: dict[str, Any] | None = None,
    source: str,
) -> Outcome:
    """fal's own failure, retried: this attempt ends ``retried`` and a new one with the
    same input waits to be sent (NOT_SENT); the avatar stays ``training`` throughout.

    Nobody is told: the owner hears only the avatar's outcome.
    """
    now = timezone.now()
    with transaction.atomic():
        won = Avatar.objects.filter(
            pk=training.avatar_id, status=S.TRAINING, current_training_id=training.pk
        ).update(updated_at=now)
        if not won:
            return _lost(training.avatar_id, S.ERROR, training.pk)
        old = Training.objects.select_related("avatar__owner").get(pk=training.pk)
        ended = {
            "finished_at": now,
            "outcome": TrainingOutcome.RETRIED,
            "fal_status": FalStatus.COMPLETED,
            "error_type": error_type,
            "error_message": redact(error_message),
            "next_check_at": None,
            "stuck_since": None,
            "queue_position": None,
        }
        Training.objects.filter(pk=training.pk).update(**ended)
        for name, value in ended.items():
            setattr(old, name, value)
            setattr(training, name, value)
        retry = _new_attempt(
            training.avatar_id,
            endpoint=old.endpoint,
            arguments=old.arguments,
            webhook_url=old.webhook_url,
            fal_status=FalStatus.NOT_SENT,
            now=now,
        )
        _event(
            training.avatar_id,
            EventKind.RETRIED,
            source,
            training_id=training.pk,
            message=wording.english(wording.retried_words, error_type),
            details={
                "error_type": error_type,
                "fal_error": error_message[:2000],
                "retry_training_id": retry.pk,
                "retry_attempt": retry.attempt,
                **(details or {}),
            },
            at=now,
        )
        old.avatar.current_training = retry
        training_retried.send(sender=Training, training=old, retry=retry)
    logger.warning(
        "🔁 Обучение перезапущено для аватара %s после сбоя fal %s (request_id=%s, попытка %s)",
        training.avatar_id,
        error_type,
        training.fal_request_id,
        retry.attempt,
    )
    return Outcome(True, S.TRAINING, "retried", training=retry)


def finish_failed(
    training: Training,
    *,
    error_message: str,
    error_type: str = "",
    http_status: int | None = None,
    detail_type_list: list[str] | tuple[str, ...] = (),
    details: dict[str, Any] | None = None,
    result: Any = None,
    source: str,
    actor: Any = None,
    notify: bool = True,
    owner_message: str = "",
    fal_finished_at: datetime | None = None,
) -> Outcome:
    """fal ended the job with a failure: cancelled if we asked it to stop, failed otherwise.

    The one rule for every path that sees a failed job (webhook, periodic check,
    fal's record): after a cancel was requested, fal's failure ("Request was
    cancelled by the user") is the cancel taking effect, so the owner gets the
    cancelled message and the timeline keeps fal's answer. Otherwise the owner's
    message comes from fal's machine-readable fields (``monitoring.owner_messages``).
    """
    chosen = owner_message or owner_messages.owner_message_for(
        error_type=error_type, detail_type_list=detail_type_list, http_status=http_status
    )
    requested = cancel_was_requested(training)
    fal_answer = {
        "fal_error": error_message[:2000],
        "error_type": error_type,
        "http_status": http_status,
        "detail_types": list(detail_type_list),
    }
    if requested or chosen == owner_messages.CANCELLED:
        return cancel(
            training,
            source=source,
            actor=actor,
            reason=error_message,
            details={**fal_answer, "cancel_requested": requested},
            notify=notify,
            fal_status=FalStatus.COMPLETED,
            fal_finished_at=fal_finished_at,
        )
    return fail(
        training,
        error_message=error_message,
        error_type=error_type,
        details={**fal_answer, **(details or {})},
        result=result,
        source=source,
        actor=actor,
        owner_message=chosen,
        notify=notify,
        fal_status=FalStatus.COMPLETED,
        fal_finished_at=fal_finished_at,
    )


def cancel(
    training: Training,
    *,
    source: str,
    actor: Any = None,
    reason: str = "",
    details: dict[str, Any] | None = None,
    notify: bool = True,
    fal_status: str | None = None,
    fal_finished_at: datetime | None = None,
) -> Outcome:
    """training → cancelled (fal confirmed it stopped, or it never started there)."""
    outcome = _finish(
        training,
        new_status=S.CANCELLED,
        outcome=TrainingOutcome.CANCELLED,
        fields={
            "owner_message": OwnerMessage.CANCELLED,
            **({"fal_status": fal_status} if fal_status else {}),
        },
        source=source,
        actor=actor,
        message=reason,
        details=details or {},
        notify=notify,
        fal_finished_at=fal_finished_at,
    )
    if outcome.changed:
        logger.info(
            "Обучение отменено для аватара %s (request_id=%s, source=%s)",
            training.avatar_id,
            training.fal_request_id,
            source,
        )
    return outcome


# --- Flags on an active training (not statuses) -------------------------------------------


def request_cancel(training: Training, *, source: str, actor: Any = None) -> bool:
    """Note that fal is asked to cancel; fal's failure from now on is the cancel taking effect."""
    now = timezone.now()
    with transaction.atomic():
        won = (
            Training.objects.active()
            .filter(pk=training.pk, cancel_requested_at__isnull=True)
            .update(cancel_requested_at=now, next_check_at=now)
        )
        if not won:
            return False
        _event(
            training.avatar_id,
            EventKind.CANCEL_REQUESTED,
            source,
            training_id=training.pk,
            actor=actor,
        )
    training.cancel_requested_at = now
    return True


def withdraw_cancel(training: Training, *, source: str, actor: Any = None, reason: str) -> bool:
    """fal answered that it will not stop the job (refused, already finished): no cancel."""
    with transaction.atomic():
        won = (
            Training.objects.active()
            .filter(pk=training.pk, cancel_requested_at__isnull=False)
            .update(cancel_requested_at=None)
        )
        if not won:
            return False
        _event(
            training.avatar_id,
            EventKind.NOTE,
            source,
            training_id=training.pk,
            actor=actor,
            message=f"cancel withdrawn: {reason}",
        )
    training.cancel_requested_at = None
    return True


def flag_stuck(
    training: Training,
    *,
    reason: str,
    source: str = EventSource.CHECK,
    details: dict[str, Any] | None = None,
    staff_reason: str = "",
) -> bool:
    """Set the stuck flag (one staff alert per episode). A no-op when already flagged.

    ``reason`` is English (the column, the event's message, the log); the staff alert
    says ``staff_reason`` when given (worded in the staff chat's language).
    """
    now = timezone.now()
    reason = redact(reason)  # it may quote fal's answer
    with transaction.atomic():
        won = (
            Training.objects.active()
            .filter(pk=training.pk, stuck_since__isnull=True)
            .update(
                stuck_since=now, stuck_reason=reason[:255], stuck_episode=F("stuck_episode") + 1
            )
        )
        if not won:
            return False
        episode = (
            Training.objects.filter(pk=training.pk).values_list("stuck_episode", flat=True).get()
        )
        _event(
            training.avatar_id,
            EventKind.STUCK,
            source,
            training_id=training.pk,
            message=reason,
            # ``details["code"]`` (from monitoring.stuck) lets pages word the reason
            # in the reader's language; ``message`` stays the English sentence.
            details={**(details or {}), "episode": episode},
            at=now,
        )
        training.stuck_since, training.stuck_reason = now, reason[:255]
        training.stuck_episode = episode
        training_flagged_stuck.send(sender=Training, training=training, episode=episode)
        outbox.queue_stuck(training=training, episode=episode, reason=staff_reason)
    logger.warning(
        "⚠️ Обучение зависло для аватара %s (request_id=%s): %s",
        training.avatar_id,
        training.fal_request_id,
        reason,
    )
    return True


def restate_stuck(
    training: Training, words: Callable[..., str], *args: object, source: str = EventSource.CHECK
) -> bool:
    """Flag ``training`` stuck with ``words(*args)``, or give a raised flag this new reason.

    The reason is stored in English and the staff alert words it in the staff chat's
    language. A new reason on a raised flag is a timeline note, not a new episode or alert.
    """
    reason = redact(wording.english(words, *args))
    staff_reason = redact(wording.in_language(STAFF_LANGUAGE, words, *args))
    if flag_stuck(training, reason=reason, source=source, staff_reason=staff_reason):
        return True
    if training.stuck_reason == reason[:255]:
        return False
    with transaction.atomic():
        won = (
            Training.objects.active()
            .filter(pk=training.pk, stuck_since__isnull=False)
            .update(stuck_reason=reason[:255])
        )
        if not won:
            return False
        _event(training.avatar_id, EventKind.NOTE, source, training_id=training.pk, message=reason)
    training.stuck_reason = reason[:255]
    return True


def clear_stuck(
    training: Training,
    *,
    source: str = EventSource.STAFF,
    actor: Any = None,
    extend_until: datetime | None = None,
) -> bool:
    """Clear the stuck flag; ``extend_until`` keeps it from being raised again before then."""
    with transaction.atomic():
        won = (
            Training.objects.active()
            .filter(pk=training.pk, stuck_since__isnull=False)
            .update(stuck_since=None, stuck_reason="", stuck_deadline_extended_until=extend_until)
        )
        if not won:
            return False
        _event(
            training.avatar_id,
            EventKind.UNSTUCK,
            source,
            training_id=training.pk,
            actor=actor,
            details={"extended_until": extend_until.isoformat() if extend_until else None},
        )
    training.stuck_since, training.stuck_reason = None, ""
    training.stuck_deadline_extended_until = extend_until
    return True
