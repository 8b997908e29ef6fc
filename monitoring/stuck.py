"""Stuck detection: an active training past one of its limits is flagged for staff.

The limits are settings; the flag is set once per episode and cleared when no limit
holds. See docs/architecture.md#stuck.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext as _

from monitoring import recovery, transitions
from monitoring.fal import payloads, results
from monitoring.models import EventSource, FalStatus, Training, TrainingType


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


@dataclass(frozen=True)
class StuckCause:
    """Which limit a training has passed, and since when: words are chosen at display.

    Pages word it in the reader's language with live durations ("stuck for 7 min; the
    limit is 2 min"); ``stuck_reason`` words it in English for the log, the stored
    column and the staff alert.
    """

    # result_unavailable, submit_unknown, fal_unreachable, in_queue, in_progress, total
    code: str
    since: datetime
    limit: timedelta
    check_failures: int = 0
    training_type: str = ""


def run_limit(training: Training) -> timedelta:
    """How long fal may run this training before our deadline cancels it on fal."""
    style = training.endpoint == payloads.ENDPOINTS[TrainingType.STYLE]
    minutes = (
        settings.TRAINING_MAX_RUN_MINUTES_STYLE
        if style
        else settings.TRAINING_MAX_RUN_MINUTES_PORTRAIT
    )
    return timedelta(minutes=minutes)


def past_run_limit(training: Training, now: datetime) -> bool:
    """Running on fal past its limit, not already being cancelled, and not extended by staff."""
    extended = training.stuck_deadline_extended_until
    return (
        training.fal_status == FalStatus.IN_PROGRESS
        and training.started_at is not None
        and training.deadline_cancel_at is None
        and training.cancel_requested_at is None
        and not (extended is not None and extended > now)
        and now - training.started_at >= run_limit(training)
    )


def stuck_cause(training: Training, now: datetime) -> StuckCause | None:
    """The limit ``training`` has passed at ``now`` (None when it has passed none)."""
    if training.finished_at is not None:
        return None
    extended = training.stuck_deadline_extended_until
    if extended is not None and extended > now:
        return None

    if training.fal_status == FalStatus.HELD:
        return None  # nothing was sent: it waits for fal's balance, not for fal
    if training.result_unavailable_since is not None:
        return StuckCause("result_unavailable", training.result_unavailable_since, timedelta(0))
    if training.fal_status == FalStatus.SUBMITTING:
        limit = timedelta(minutes=settings.STUCK_SUBMITTING_MINUTES)
        if now - training.sent_from >= limit:
            return StuckCause("submit_unknown", training.sent_from, limit)
    if training.check_failures:
        since = training.last_check_ok_at or training.submitted_at or training.created_at
        limit = timedelta(minutes=settings.STUCK_FAL_UNREACHABLE_MINUTES)
        if now - since >= limit:
            return StuckCause(
                "fal_unreachable", since, limit, check_failures=training.check_failures
            )
    total = timedelta(hours=settings.STUCK_TOTAL_HOURS)
    if training.check_failures:
        # The last checks failed: fal's status is what it was before them, unconfirmed.
        # No limit is measured from it (the "no successful check" limit above holds).
        if now - training.sent_from >= total:
            return StuckCause("total", training.sent_from, total)
        return None
    if training.fal_status == FalStatus.IN_QUEUE:
        since = training.submitted_at or training.created_at
        limit = timedelta(minutes=settings.STUCK_IN_QUEUE_MINUTES)
        if now - since >= limit:
            return StuckCause("in_queue", since, limit)
    if training.fal_status == FalStatus.IN_PROGRESS:
        style = training.endpoint == payloads.ENDPOINTS[TrainingType.STYLE]
        minutes = (
            settings.STUCK_IN_PROGRESS_MINUTES_STYLE
            if style
            else settings.STUCK_IN_PROGRESS_MINUTES_PORTRAIT
        )
        since = training.started_at or training.submitted_at or training.created_at
        if now - since >= timedelta(minutes=minutes):
            kind = TrainingType.STYLE if style else TrainingType.PORTRAIT
            return StuckCause("in_progress", since, timedelta(minutes=minutes), training_type=kind)
    if now - training.sent_from >= total:
        return StuckCause("total", training.sent_from, total)
    return None


def cause_details(cause: StuckCause) -> dict[str, object]:
    """The cause as JSON for the timeline event (worded again when displayed)."""
    return {
        "code": cause.code,
        "since": cause.since.isoformat(),
        "limit_minutes": _minutes(cause.limit),
        "check_failures": cause.check_failures,
        "training_type": cause.training_type,
    }


def cause_from_details(details: dict) -> StuckCause | None:
    """The cause recorded by ``cause_details`` (None when the event predates codes)."""
    try:
        return StuckCause(
            code=str(details["code"]),
            since=datetime.fromisoformat(str(details["since"])),
            limit=timedelta(minutes=int(details["limit_minutes"])),
            check_failures=int(details.get("check_failures") or 0),
            training_type=str(details.get("training_type") or ""),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _live_minutes(delta: timedelta) -> int:
    return max(_minutes(delta), 0)


def cause_words(cause: StuckCause, now: datetime) -> str:
    """The stuck cause with live durations, in the reader's language."""
    values = {"age": _live_minutes(now - cause.since), "limit": _live_minutes(cause.limit)}
    if cause.code == "result_unavailable":
        return (
            _(
                "finished on fal %(age)s min ago, but its result is not available (the queue "
                "forgot it and fal's record has no payload): the owner has not been told"
            )
            % values
        )
    if cause.code == "submit_unknown":
        return (
            _(
                "fal's answer to the submit is unknown for %(age)s min (the limit is %(limit)s "
                "min): check fal before retrying; it is never resubmitted automatically"
            )
            % values
        )
    if cause.code == "fal_unreachable":
        return _(
            "no successful check for %(age)s min (the limit is %(limit)s min; %(n)s failed in "
            "a row)"
        ) % {**values, "n": cause.check_failures}
    if cause.code == "in_queue":
        return _("in fal's queue for %(age)s min; the limit is %(limit)s min") % values
    if cause.code == "in_progress":
        return _("training on fal for %(age)s min; the limit is %(limit)s min") % values
    return _("active for %(age)s min in total; the limit is %(limit)s min") % values


def staff_alert_words(cause: StuckCause, now: datetime) -> str:
    """The cause for the staff chat's alert, which is in Russian like every staff message."""
    with translation.override("ru"):
        return cause_words(cause, now)


def stuck_reason(training: Training, now: datetime) -> str:
    """Why ``training`` counts as stuck at ``now``, in English ("" when it does not)."""
    cause = stuck_cause(training, now)
    if cause is None:
        return ""
    age = _minutes(now - cause.since)
    limit = _minutes(cause.limit)
    if cause.code == "result_unavailable":
        return results.RESULT_UNAVAILABLE
    if cause.code == "submit_unknown":
        # What is being done about it (fal's record is searched), not a running count:
        # the reason changes only when what is done changes.
        return recovery.lost_submit_reason(training, now)
    if cause.code == "fal_unreachable":
        return f"no successful check for {age} min ({cause.check_failures} failed in a row)"
    if cause.code == "in_queue":
        return f"in fal's queue for {age} min"
    if cause.code == "in_progress":
        return f"in progress for {age} min (limit {limit} min for {cause.training_type})"
    return f"active for {age} min in total"


def review(
    trainings: Iterable[Training], now: datetime, *, source: str = EventSource.CHECK
) -> tuple[int, int]:
    """Flag what crossed a limit and clear what no longer does: (flagged, cleared).

    Works on the in-memory trainings (just checked), so the common case costs no query.
    """
    flagged = cleared = 0
    for training in trainings:
        reason = stuck_reason(training, now)
        if reason and training.stuck_since is None:
            cause = stuck_cause(training, now)
            assert cause is not None
            flagged += transitions.flag_stuck(
                training,
                reason=reason,
                source=source,
                details=cause_details(cause),
                staff_reason=staff_alert_words(cause, now),
            )
        elif (
            not reason
            and training.stuck_since is not None
            and training.finished_at is None
            and not results.flagged_for_result_url(training)
        ):
            extended = training.stuck_deadline_extended_until
            cleared += transitions.clear_stuck(
                training,
                source=source,
                # Keep a staff extension in force; the check's own clearing sets none.
                extend_until=extended if extended and extended > now else None,
            )
    return flagged, cleared
