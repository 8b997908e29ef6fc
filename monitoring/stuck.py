"""Stuck detection: an active training past one of its limits is flagged for staff.

The limits are settings, with these defaults (README's configuration table):

=================================== ======= =============================================
setting                              default  measured from
=================================== ======= =============================================
STUCK_SUBMITTING_MINUTES              5 min  the start, while fal's answer to the submit
                                             is unknown (never resubmitted automatically)
STUCK_IN_QUEUE_MINUTES               60 min  the submit, while fal says IN_QUEUE
STUCK_IN_PROGRESS_MINUTES_PORTRAIT   90 min  the first IN_PROGRESS seen (portrait trainer)
STUCK_IN_PROGRESS_MINUTES_STYLE      45 min  the first IN_PROGRESS seen (style trainer)
STUCK_TOTAL_HOURS                     6 h    the start of the attempt, whatever its state
STUCK_FAL_UNREACHABLE_MINUTES        15 min  the last successful check, while checks fail
=================================== ======= =============================================

Crossing a limit flags the training once per episode (``transitions.flag_stuck`` writes
the event and requests the one staff alert). A stuck training keeps being checked; when
it finishes the flag clears with it, and when no limit holds any more (it left the
queue, fal answers again) the check clears the flag, so a later limit is a new episode.
Staff can push the deadline back (``stuck_deadline_extended_until``): no flag before then.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings

from monitoring import transitions
from monitoring.fal import payloads
from monitoring.models import EventSource, FalStatus, Training, TrainingType


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def stuck_reason(training: Training, now: datetime) -> str:
    """Why ``training`` counts as stuck at ``now`` ("" when it does not)."""
    if training.finished_at is not None:
        return ""
    extended = training.stuck_deadline_extended_until
    if extended is not None and extended > now:
        return ""

    if training.fal_status == FalStatus.SUBMITTING:
        age = now - training.created_at
        if age >= timedelta(minutes=settings.STUCK_SUBMITTING_MINUTES):
            return (
                f"submit outcome unknown for {_minutes(age)} min: check fal before retrying "
                "(never resubmitted automatically)"
            )
    if training.check_failures:
        since = training.last_check_ok_at or training.submitted_at or training.created_at
        if now - since >= timedelta(minutes=settings.STUCK_FAL_UNREACHABLE_MINUTES):
            return (
                f"no successful check for {_minutes(now - since)} min "
                f"({training.check_failures} failed in a row)"
            )
    if training.check_failures:
        # The last checks failed: fal's status is what it was before them, unconfirmed.
        # No limit is measured from it (the "no successful check" limit above holds).
        return _total_reason(training, now)
    if training.fal_status == FalStatus.IN_QUEUE:
        since = training.submitted_at or training.created_at
        if now - since >= timedelta(minutes=settings.STUCK_IN_QUEUE_MINUTES):
            return f"in fal's queue for {_minutes(now - since)} min"
    if training.fal_status == FalStatus.IN_PROGRESS:
        style = training.endpoint == payloads.ENDPOINTS[TrainingType.STYLE]
        limit = (
            settings.STUCK_IN_PROGRESS_MINUTES_STYLE
            if style
            else settings.STUCK_IN_PROGRESS_MINUTES_PORTRAIT
        )
        since = training.started_at or training.submitted_at or training.created_at
        if now - since >= timedelta(minutes=limit):
            kind = TrainingType.STYLE if style else TrainingType.PORTRAIT
            return f"in progress for {_minutes(now - since)} min (limit {limit} min for {kind})"
    return _total_reason(training, now)


def _total_reason(training: Training, now: datetime) -> str:
    if now - training.created_at >= timedelta(hours=settings.STUCK_TOTAL_HOURS):
        return f"active for {_minutes(now - training.created_at)} min in total"
    return ""


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
            flagged += transitions.flag_stuck(training, reason=reason, source=source)
        elif not reason and training.stuck_since is not None and training.finished_at is None:
            extended = training.stuck_deadline_extended_until
            cleared += transitions.clear_stuck(
                training,
                source=source,
                # Keep a staff extension in force; the check's own clearing sets none.
                extend_until=extended if extended and extended > now else None,
            )
    return flagged, cleared
