"""The one place that changes an avatar's status: a conditional UPDATE naming the status
it leaves; only the winner writes the event and the outbox row.
See docs/architecture.md#statuses and #transitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Required, TypedDict, Unpack

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

# Sent inside the transaction of the change, so receivers write their rows with it or not.
# finished: ``training`` (with avatar and owner), ``outcome`` (the new status);
# flagged_stuck: ``training``, ``episode``; retried: ``training`` (the failed attempt)
# and ``retry``; submitted: ``training_id``, ``source``.
training_finished = django.dispatch.Signal()
training_flagged_stuck = django.dispatch.Signal()
training_retried = django.dispatch.Signal()
training_submitted = django.dispatch.Signal()

HELD = "held"  # ``Outcome.detail`` of a start held for fal's balance
STALE = "stale training attempt: the avatar has a newer one"


class InvalidTransition(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    """What a transition did. ``changed`` is False for a no-op (already there, lost a race)."""

    changed: bool
    status: str
    detail: str = ""
    training: Training | None = None

    def __bool__(self) -> bool:
        return self.changed


def _event(
    avatar_id: int,
    kind: str,
    source: str,
    *,
    actor: Any = None,
    message: str = "",
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
    **fields: Any,  # training_id, old_status, new_status
) -> AvatarEvent:
    return AvatarEvent.objects.create(
        avatar_id=avatar_id,
        kind=kind,
        source=source,
        actor=actor if getattr(actor, "pk", None) else None,
        **fields,
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
        return Outcome(False, current, STALE)
    allowed = target in ALLOWED_MOVES[current]
    if current == target or (not allowed and current in (S.COMPLETED, S.ERROR, S.CANCELLED)):
        return Outcome(False, current, f"already {current}")
    if allowed:
        # The move is valid from here, so another condition (sub-state) did not hold.
        return Outcome(False, current, f"not possible now (avatar is {current})")
    raise InvalidTransition(f"An avatar cannot move from {current} to {target}")


def _change(
    training: Training, match: dict[str, Any], changes: dict[str, Any], kind: str, **event: Any
) -> bool:
    """Apply ``changes`` to ``training`` (in memory too) if it is active and ``match``es;
    only the winner writes the event, in the same transaction (the caller's, if any)."""
    with transaction.atomic(savepoint=False):
        if not Training.objects.active().filter(pk=training.pk, **match).update(**changes):
            return False
        _event(training.avatar_id, kind, training_id=training.pk, **event)
    for name, value in changes.items():
        setattr(training, name, value)
    return True


def create_avatar(
    avatar: Avatar, *, ready: bool = True, source: str = EventSource.COMMAND, actor: Any = None
) -> Avatar:
    with transaction.atomic():
        avatar.status = S.READY_FOR_TRAINING if ready else S.DRAFT
        avatar.save(force_insert=True)
        _event(avatar.pk, EventKind.CREATED, source, actor=actor, new_status=avatar.status)
    return avatar


def mark_ready(avatar: Avatar, *, source: str, actor: Any = None) -> Outcome:
    return _move(avatar, S.DRAFT, S.READY_FOR_TRAINING, source, actor)


RETRAINABLE = (S.ERROR, S.CANCELLED)


def retrain(avatar: Avatar, *, source: str = EventSource.STAFF, actor: Any = None) -> Outcome:
    """error or cancelled → ready_for_training; the ended attempt keeps its history."""
    old = avatar.status if avatar.status in RETRAINABLE else S.ERROR
    return _move(avatar, old, S.READY_FOR_TRAINING, source, actor)


def _move(avatar: Avatar, old: str, new: str, source: str, actor: Any, **attempt: Any) -> Outcome:
    """``old`` → ``new``; given the fields of an ``attempt``, a new current one."""
    now = timezone.now()
    event: dict[str, Any] = {"actor": actor, "old_status": old, "new_status": new, "at": now}
    training = None
    with transaction.atomic():
        if not Avatar.objects.filter(pk=avatar.pk, status=old).update(status=new, updated_at=now):
            return _lost(avatar.pk, new)
        if attempt:
            training = _new_attempt(avatar.pk, now, **attempt)
            training.avatar = avatar
            details = {"attempt": training.attempt, "endpoint": training.endpoint}
            event.update(training_id=training.pk, details=details)
        _event(avatar.pk, EventKind.STATUS, source, **event)
    avatar.status = new
    if training is not None:
        avatar.current_training = training
    return Outcome(True, new, training=training)


def _new_attempt(avatar_id: int, now: datetime, **fields: Any) -> Training:
    """The avatar's next attempt, made current (the caller's transaction holds the avatar)."""
    training = Training.objects.create(
        avatar_id=avatar_id,
        attempt=Training.objects.filter(avatar_id=avatar_id).count() + 1,
        created_at=now,
        **fields,
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
    """ready_for_training → training with a new attempt in sub-state SUBMITTING, committed
    before anything is sent to fal: a second click finds the avatar already training."""
    attempt: dict[str, Any] = {"endpoint": endpoint, "arguments": arguments}
    attempt.update(webhook_url=webhook_url, fal_status=FalStatus.SUBMITTING)
    return _move(avatar, S.READY_FOR_TRAINING, S.TRAINING, source, actor, **attempt)


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
    """SUBMITTING → IN_QUEUE with fal's request id (also a lost submit found, an adoption)."""
    now = timezone.now()
    with transaction.atomic():
        changes = {
            "fal_request_id": request_id,
            "status_url": status_url,
            "response_url": response_url,
            "cancel_url": cancel_url,
            "fal_status": FalStatus.IN_QUEUE,
            "queue_position": queue_position,
            "queue_position_first": queue_position,
            "gateway_request_id": gateway_request_id[:128],
            "submitted_at": now,
            "next_check_at": next_check_at or now,
            "check_failures": 0,
            "last_check_error": "",
        }
        if not _change(
            training,
            {"fal_request_id__isnull": True},
            changes,
            EventKind.SUBMITTED,
            source=source,
            actor=actor,
            message=message,
            details={"request_id": request_id, "queue_position": queue_position, **(details or {})},
        ):
            return False
        training_submitted.send(sender=Training, training_id=training.pk, source=source)
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
    The avatar stays ``training``, nobody is told, no check looks at it."""
    now = timezone.now()
    details = {"code": "held", "reason": reason, "detail": detail}
    changes = {
        "fal_status": FalStatus.HELD,
        "held_since": training.held_since or now,
        "held_reason": reason,
        "next_check_at": None,
        "submit_unknown_since": None,
    }
    if not _change(
        training,
        {"fal_status": training.fal_status, "fal_request_id__isnull": True},
        changes,
        EventKind.NOTE,
        source=source,
        actor=actor,
        message=wording.english(wording.note_words, details),
        details=details,
        at=now,
    ):
        return Outcome(False, S.TRAINING, "already sent", training)
    logger.warning(
        "Start held for avatar %s (training %s): %s", training.avatar_id, training.pk, reason
    )
    return Outcome(True, S.TRAINING, HELD, training)


def record_note(training: Training, *, source: str, **event: Any) -> AvatarEvent:
    """A timeline note; ``details["code"]`` lets pages word it, ``message`` is English."""
    return _event(training.avatar_id, EventKind.NOTE, source, training_id=training.pk, **event)


def refuse_submit(
    training: Training,
    *,
    error_type: str,
    error_message: str,
    source: str,
    actor: Any = None,
    outcome: str = TrainingOutcome.REFUSED,
) -> Outcome:
    """training (SUBMITTING, no job on fal) → ready_for_training: fal refused the submit,
    or (``outcome=NO_FAL_JOB``) an Operator recorded that a lost submit made no job."""
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
        fields = {"fal_status": "", "error_type": error_type, "error_message": error_message}
        _end(now, outcome, fields, training)
        _event(
            training.avatar_id,
            EventKind.SUBMIT_REFUSED,
            source,
            training_id=training.pk,
            actor=actor,
            old_status=S.TRAINING,
            new_status=S.READY_FOR_TRAINING,
            message=error_message,
            details={"error_type": error_type, "outcome": outcome},
        )
    return Outcome(True, S.READY_FOR_TRAINING, training=training)


def record_fal_status(
    training: Training,
    *,
    fal_status: str,
    queue_position: int | None = None,
    source: str,
) -> bool:
    if fal_status == training.fal_status:
        return False
    now = timezone.now()
    updates: dict[str, Any] = {"fal_status": fal_status, "queue_position": queue_position}
    if fal_status == FalStatus.IN_PROGRESS and training.started_at is None:
        updates["started_at"] = now
    with transaction.atomic():
        if not _change(
            training,
            {"fal_status": training.fal_status},
            updates,
            EventKind.FAL_STATUS,
            source=source,
            old_status=training.fal_status,
            new_status=fal_status,
        ):
            return False
        if "started_at" in updates and training.submitted_at and source != EventSource.ADOPT:
            # Seen running for the first time: how long it waited in fal's queue.
            totals.observe(
                totals.FAL_QUEUE,
                {"trainer": training.endpoint},
                (now - training.submitted_at).total_seconds(),
            )
    return True


def _end(now: datetime, outcome: str, fields: dict[str, Any], *trainings: Training) -> None:
    """End the attempt (in memory too). ``fields`` has the sub-state: "" (it describes an
    active attempt) or fal's own end (COMPLETED); fal's texts are stored without keys."""
    updates = {
        "finished_at": now,
        "outcome": outcome,
        "next_check_at": None,
        "stuck_since": None,
        "queue_position": None,
        **redact_value(fields),
    }
    Training.objects.filter(pk=trainings[0].pk).update(**updates)
    for training in trainings:
        for name, value in updates.items():
            setattr(training, name, value)


class Finishing(TypedDict, total=False):
    """Who finishes an attempt, and how. ``notify=False`` (an adopted job that had finished
    elsewhere): no owner message; ``fal_finished_at`` starts the owner-told figure."""

    source: Required[str]
    actor: Any
    notify: bool
    fal_finished_at: datetime | None


def _finish(
    training: Training,
    *,
    new_status: str,
    fields: dict[str, Any],
    message: str,
    details: dict[str, Any],
    source: str,
    actor: Any = None,
    notify: bool = True,
    fal_finished_at: datetime | None = None,
) -> Outcome:
    if training.finished_at is not None and Training.avatar.is_cached(training):
        # An attempt that has finished never finishes again (finished_at is never
        # cleared), so a duplicate needs no UPDATE to be told so.
        avatar = training.avatar
        stale = avatar.current_training_id != training.pk
        return Outcome(False, avatar.status, STALE if stale else f"already {avatar.status}")
    now = timezone.now()
    # The loser's explanation is read after the block, so that ``InvalidTransition``
    # never marks the caller's transaction as broken.
    with transaction.atomic():
        won = Avatar.objects.filter(
            pk=training.avatar_id, status=S.TRAINING, current_training_id=training.pk
        ).update(status=new_status, updated_at=now)
        if won:
            # Only the winner writes the rest: one event, one message. The avatar, owner
            # and stuck flag are read under the avatar's row lock, unless the caller has
            # just read them (the webhook has, to find the training).
            if Training.avatar.is_cached(training) and Avatar.owner.is_cached(training.avatar):
                fresh = training
            else:
                fresh = Training.objects.select_related("avatar__owner").get(pk=training.pk)
            if fresh.stuck_since is not None:
                details = {**details, "was_stuck": fresh.stuck_reason}
            # ``outcome``: the same words as the avatar's status.
            _end(now, new_status, fields, fresh, training)
            fresh.avatar.status = new_status
            _event(
                training.avatar_id,
                EventKind.STATUS,
                source,
                training_id=training.pk,
                actor=actor,
                old_status=S.TRAINING,
                new_status=new_status,
                message=message,
                details=details,
                at=now,
            )
            # Callbacks go whatever the owner is told (staff may have chosen "no message").
            training_finished.send(sender=Training, training=fresh, outcome=new_status)
            if notify:
                # fal's end as the caller read it (its record), else when we learned it.
                outbox.queue_outcome(
                    training=fresh,
                    outcome=new_status,
                    fal_finished_at=min(fal_finished_at or now, now),
                )
            # Counted after the commit, in a short transaction of its own: every finish
            # adds to the same few rows, which this one would hold locked until its commit.
            transaction.on_commit(
                lambda: _count_finish(fresh, new_status, source, now), robust=True
            )
    if not won:
        return _lost(training.avatar_id, new_status, training.pk)
    level, line = _FINISH_LOGS[new_status]
    logger.log(
        level,
        line,
        training.avatar_id,
        training.fal_request_id,
        source,
        *((fields["error_type"], fields["error_message"]) if new_status == S.ERROR else ()),
        extra={"avatar_id": training.avatar_id, "request_id": training.fal_request_id}
        if new_status == S.COMPLETED
        else None,
    )
    return Outcome(True, new_status, training=training)


_FINISH_LOGS: dict[str, tuple[int, str]] = {
    S.COMPLETED: (logging.INFO, "🎉 Обучение завершено для аватара %s (request_id=%s, source=%s)"),
    S.ERROR: (
        logging.WARNING,
        "❌ Обучение не удалось для аватара %s (request_id=%s, source=%s): %s %s",
    ),
    S.CANCELLED: (logging.INFO, "Обучение отменено для аватара %s (request_id=%s, source=%s)"),
}


def _count_finish(training: Training, new_status: str, source: str, now: datetime) -> None:
    """The figures of a committed finish (``/metrics``); a crash before this loses a count."""
    started = None
    # Only a ready avatar has a time to ready; an adopted job started elsewhere.
    if new_status == S.COMPLETED and source != EventSource.ADOPT:
        if "created_at" not in training.get_deferred_fields():
            started = training.created_at
        else:
            # The webhook's lookup reads only what finishing needs: the timeline's move
            # to training, written at the same instant, rather than the row again.
            started = (
                AvatarEvent.objects.filter(
                    training_id=training.pk, kind=EventKind.STATUS, new_status=S.TRAINING
                )
                .values_list("created_at", flat=True)
                .first()
            )
    with totals.together():
        totals.add("finishes", {"learned_by": source, "outcome": new_status})
        if started is not None:
            totals.observe(
                totals.TIME_TO_READY,
                {"trainer": training.endpoint},
                (now - started).total_seconds(),
            )


def complete(
    training: Training,
    *,
    lora_url: str,
    config_url: str = "",
    result: Any = None,
    details: dict[str, Any] | None = None,
    **finishing: Unpack[Finishing],
) -> Outcome:
    """training → completed, storing the LoRA and config URLs and fal's raw result."""
    return _finish(
        training,
        new_status=S.COMPLETED,
        fields={
            "lora_url": lora_url,
            "config_url": config_url,
            "result": result,
            "fal_status": FalStatus.COMPLETED,
        },
        message="",
        details={"lora_url": lora_url, **(details or {})},
        **finishing,
    )


def fail(
    training: Training,
    *,
    error_message: str,
    error_type: str = "",
    details: dict[str, Any] | None = None,
    result: Any = None,
    owner_message: str = "",
    staff_note: str = "",
    fal_status: str = "",
    **finishing: Unpack[Finishing],
) -> Outcome:
    """training → error, with fal's message and type (or ours, saying what we saw).
    ``fal_status`` is COMPLETED when fal ended the job (fal has no FAILED)."""
    chosen = owner_message or owner_messages.owner_message_for(error_type=error_type)
    return _finish(
        training,
        new_status=S.ERROR,
        fields={
            "error_type": error_type,
            "error_message": error_message,
            "result": result,
            "owner_message": chosen,
            "staff_note": staff_note,
            "fal_status": fal_status,
        },
        message=error_message,
        details={"error_type": error_type, "owner_message": chosen, **(details or {})},
        **finishing,
    )


def cancel_was_requested(training: Training) -> bool:
    """Whether staff asked fal to stop this attempt (read again: it may be newly recorded)."""
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
    """fal's own failure, retried: this attempt ends ``retried``, a new one with the same
    input waits to be sent (NOT_SENT). The avatar stays ``training``; nobody is told."""
    now = timezone.now()
    with transaction.atomic():
        won = Avatar.objects.filter(
            pk=training.avatar_id, status=S.TRAINING, current_training_id=training.pk
        ).update(updated_at=now)
        if not won:
            return _lost(training.avatar_id, S.ERROR, training.pk)
        old = Training.objects.select_related("avatar__owner").get(pk=training.pk)
        ended = {
            "fal_status": FalStatus.COMPLETED,
            "error_type": error_type,
            "error_message": error_message,
        }
        _end(now, TrainingOutcome.RETRIED, ended, old, training)
        retry = _new_attempt(
            training.avatar_id,
            now,
            endpoint=old.endpoint,
            arguments=old.arguments,
            webhook_url=old.webhook_url,
            fal_status=FalStatus.NOT_SENT,
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
    owner_message: str = "",
    **finishing: Unpack[Finishing],
) -> Outcome:
    """fal ended the job with a failure: cancelled if we asked it to stop (fal's "Request
    was cancelled by the user" is the cancel taking effect), failed otherwise."""
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
    ended = FalStatus.COMPLETED
    if requested or chosen == owner_messages.CANCELLED:
        details = {**fal_answer, "cancel_requested": requested}
        return cancel(
            training, reason=error_message, details=details, fal_status=ended, **finishing
        )
    return fail(
        training,
        error_message=error_message,
        error_type=error_type,
        details={**fal_answer, **(details or {})},
        result=result,
        owner_message=chosen,
        fal_status=ended,
        **finishing,
    )


def cancel(
    training: Training,
    *,
    reason: str = "",
    details: dict[str, Any] | None = None,
    fal_status: str = "",
    **finishing: Unpack[Finishing],
) -> Outcome:
    """training → cancelled (fal confirmed it stopped, or it never started there)."""
    return _finish(
        training,
        new_status=S.CANCELLED,
        fields={"owner_message": OwnerMessage.CANCELLED, "fal_status": fal_status},
        message=reason,
        details=details or {},
        **finishing,
    )


def request_cancel(training: Training, *, source: str, actor: Any = None) -> bool:
    """Note that fal is asked to cancel; fal's failure from now on is the cancel taking effect."""
    now = timezone.now()
    return _change(
        training,
        {"cancel_requested_at__isnull": True},
        {"cancel_requested_at": now, "next_check_at": now},
        EventKind.CANCEL_REQUESTED,
        source=source,
        actor=actor,
    )


def withdraw_cancel(training: Training, *, source: str, actor: Any = None, reason: str) -> bool:
    """fal answered that it will not stop the job (refused, already finished): no cancel."""
    return _change(
        training,
        {"cancel_requested_at__isnull": False},
        {"cancel_requested_at": None},
        EventKind.NOTE,
        source=source,
        actor=actor,
        message=f"cancel withdrawn: {reason}",
    )


def flag_stuck(
    training: Training,
    *,
    reason: str,
    source: str = EventSource.CHECK,
    details: dict[str, Any] | None = None,
    staff_reason: str = "",
) -> bool:
    """Set the stuck flag (one staff alert per episode; ``reason`` in English, the alert's
    ``staff_reason`` in the staff's language). A no-op when already flagged."""
    now = timezone.now()
    reason = redact(reason)  # it may quote fal's answer
    with transaction.atomic():
        changes = {"stuck_since": now, "stuck_reason": reason[:255]}
        won = (
            Training.objects.active()
            .filter(pk=training.pk, stuck_since__isnull=True)
            .update(**changes, stuck_episode=F("stuck_episode") + 1)
        )
        if not won:
            return False
        episode = (
            Training.objects.filter(pk=training.pk).values_list("stuck_episode", flat=True).get()
        )
        _event(
            training.avatar_id,
            EventKind.STUCK,
            source=source,
            training_id=training.pk,
            message=reason,
            # ``details["code"]`` (from monitoring.stuck) lets pages word the reason.
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
    """Flag ``training`` stuck with ``words(*args)``, or give a raised flag this new reason
    (a timeline note, not a new episode or alert)."""
    reason = redact(wording.english(words, *args))
    staff_reason = redact(wording.in_language(STAFF_LANGUAGE, words, *args))
    if flag_stuck(training, reason=reason, source=source, staff_reason=staff_reason):
        return True
    if training.stuck_reason == reason[:255]:
        return False
    return _change(
        training,
        {"stuck_since__isnull": False},
        {"stuck_reason": reason[:255]},
        EventKind.NOTE,
        source=source,
        message=reason,
    )


def clear_stuck(
    training: Training,
    *,
    source: str = EventSource.STAFF,
    actor: Any = None,
    extend_until: datetime | None = None,
) -> bool:
    """Clear the stuck flag; ``extend_until`` keeps it from being raised again before then."""
    return _change(
        training,
        {"stuck_since__isnull": False},
        {
            "stuck_since": None,
            "stuck_reason": "",
            "stuck_deadline_extended_until": extend_until,
        },
        EventKind.UNSTUCK,
        source=source,
        actor=actor,
        details={"extended_until": extend_until.isoformat() if extend_until else None},
    )
