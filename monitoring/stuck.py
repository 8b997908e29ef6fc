"""Stuck detection: an active training past one of its limits is flagged for staff.
See docs/architecture.md#stuck.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings

from monitoring import transitions, wording
from monitoring.fal import payloads, results
from monitoring.models import EventSource, FalStatus, Training, TrainingType
from monitoring.wording import StuckCause, cause_details, cause_words
from notifications.messages import STAFF_LANGUAGE


def _extended(training: Training, now: datetime) -> bool:
    extended = training.stuck_deadline_extended_until
    return extended is not None and extended > now


def run_limit(training: Training) -> timedelta:
    """How long fal may run this training before our deadline cancels it on fal."""
    if payloads.training_type_of(training.endpoint) == TrainingType.STYLE:
        return timedelta(minutes=settings.TRAINING_MAX_RUN_MINUTES_STYLE)
    return timedelta(minutes=settings.TRAINING_MAX_RUN_MINUTES_PORTRAIT)


def past_run_limit(training: Training, now: datetime) -> bool:
    """Running on fal past its limit, not already being cancelled, and not extended by staff."""
    return (
        training.fal_status == FalStatus.IN_PROGRESS
        and training.started_at is not None
        and training.deadline_cancel_at is None
        and training.cancel_requested_at is None
        and not _extended(training, now)
        and now - training.started_at >= run_limit(training)
    )


def stuck_cause(training: Training, now: datetime) -> StuckCause | None:
    # A held start was never sent: it waits for fal's balance, not for fal.
    if training.finished_at is not None or _extended(training, now) or training.is_held:
        return None
    if training.result_unavailable_since is not None:
        return StuckCause("result_unavailable", training.result_unavailable_since, timedelta(0))
    causes: list[StuckCause] = []  # the candidates, in order
    if training.fal_status == FalStatus.SUBMITTING:
        limit = timedelta(minutes=settings.STUCK_SUBMITTING_MINUTES)
        causes.append(StuckCause("submit_unknown", training.sent_from, limit))
    if training.check_failures:
        # After failed checks fal's status is unconfirmed: no limit is measured from it.
        since = training.last_check_ok_at or training.submitted_at or training.created_at
        limit = timedelta(minutes=settings.STUCK_FAL_UNREACHABLE_MINUTES)
        failures = training.check_failures
        causes.append(StuckCause("fal_unreachable", since, limit, check_failures=failures))
    elif training.fal_status == FalStatus.IN_QUEUE:
        limit = timedelta(minutes=settings.STUCK_IN_QUEUE_MINUTES)
        causes.append(StuckCause("in_queue", training.submitted_at or training.created_at, limit))
    elif training.fal_status == FalStatus.IN_PROGRESS:
        kind = payloads.training_type_of(training.endpoint)
        limit = timedelta(
            minutes=settings.STUCK_IN_PROGRESS_MINUTES_STYLE
            if kind == TrainingType.STYLE
            else settings.STUCK_IN_PROGRESS_MINUTES_PORTRAIT
        )
        since = training.started_at or training.submitted_at or training.created_at
        causes.append(StuckCause("in_progress", since, limit, training_type=kind))
    total = timedelta(hours=settings.STUCK_TOTAL_HOURS)
    causes.append(StuckCause("total", training.sent_from, total))
    return next((cause for cause in causes if now - cause.since >= cause.limit), None)


def live_words(training: Training, now: datetime) -> str:
    """The stuck reason now, in the reader's language, else the stored one (set by hand)."""
    cause = stuck_cause(training, now)
    return cause_words(cause, now) if cause is not None else training.stuck_reason


def review(
    trainings: Iterable[Training], now: datetime, *, source: str = EventSource.CHECK
) -> tuple[int, int]:
    """Flag what crossed a limit, clear what no longer does, from the in-memory trainings
    (the common case costs no query); returns (flagged, cleared)."""
    flagged = cleared = 0
    for training in trainings:
        cause = stuck_cause(training, now)
        if cause is not None and training.stuck_since is None:
            flagged += transitions.flag_stuck(
                training,
                reason=wording.english(cause_words, cause, now),
                source=source,
                details=cause_details(cause),
                staff_reason=wording.in_language(STAFF_LANGUAGE, cause_words, cause, now),
            )
        elif (
            cause is None
            and training.stuck_since is not None
            and training.finished_at is None
            and not results.flagged_for_result_url(training)
        ):
            cleared += transitions.clear_stuck(
                training,
                source=source,
                # Keep a staff extension in force; the check's own clearing sets none.
                extend_until=training.stuck_deadline_extended_until
                if _extended(training, now)
                else None,
            )
    return flagged, cleared
