"""When an active training will be ready: a point estimate and a range, from our history.

Computed when a check updates a training, stored on the row, only read elsewhere; a job
past its history's 80th percentile is "taking longer than usual". See docs/eta.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from monitoring.fal.payloads import ENDPOINTS
from monitoring.models import FalStatus, Training, TrainingOutcome, TrainingType

Key = tuple[str, str]  # (endpoint, steps setting or "")

LOW_Q, HIGH_Q = 0.2, 0.8
# The queue's pace moves (±50 % in ten minutes is ordinary): the queue part's range.
QUEUE_LOW, QUEUE_HIGH = 0.75, 1.5
# The drain rate's moving average forgets over about this long.
DRAIN_MEMORY_SECONDS = 600.0
# Log-normal spread of the trainer defaults (until history exists).
DEFAULT_SIGMA = 0.35
_STEP = re.compile(r"step\D{0,3}(\d+)\s*/\s*(\d+)", re.IGNORECASE)


def key_of(endpoint: str, arguments: Any) -> Key:
    steps = arguments.get("steps") if isinstance(arguments, dict) else None
    return endpoint, "" if steps is None else str(steps)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks of sorted ``values``."""
    position = (len(values) - 1) * q
    lower = math.floor(position)
    upper = min(lower + 1, len(values) - 1)
    return values[lower] + (values[upper] - values[lower]) * (position - lower)


@dataclass(frozen=True)
class History:
    """Sorted run times (s) and the median queue seconds per position of one key."""

    runs: tuple[float, ...]
    per_position: float


def default_history(endpoint: str) -> History:
    """The trainer's defaults as a log-normal history (ETA_DEFAULT_*_MINUTES)."""
    style = endpoint == ENDPOINTS.get(TrainingType.STYLE)
    minutes = settings.ETA_DEFAULT_STYLE_MINUTES if style else settings.ETA_DEFAULT_PORTRAIT_MINUTES
    # 39 evenly spaced quantiles of a log-normal around the default median.
    normal = [NormalDist().inv_cdf((i + 1) / 40) for i in range(39)]
    runs = tuple(minutes * 60 * math.exp(DEFAULT_SIGMA * z) for z in normal)
    return History(runs, settings.ETA_DEFAULT_SECONDS_PER_POSITION)


def history_from(
    rows: Iterable[tuple[datetime | None, datetime | None, datetime | None, int | None]],
) -> History | None:
    """(submitted, started, finished, first position) rows → History (None: too few)."""
    runs: list[float] = []
    per_position: list[float] = []
    for submitted, started, finished, first in rows:
        if submitted is None or started is None or finished is None:
            continue
        run = (finished - started).total_seconds()
        if run <= 0:
            continue
        runs.append(run)
        queued = (started - submitted).total_seconds()
        if first is not None and queued >= 0:
            per_position.append(queued / (first + 1))
    if len(runs) < settings.ETA_MIN_HISTORY:
        return None
    if not per_position:
        per_position = [settings.ETA_DEFAULT_SECONDS_PER_POSITION]
    return History(tuple(sorted(runs)), quantile(sorted(per_position), 0.5))


def load(keys: Iterable[Key]) -> dict[Key, History]:
    """History per key: one query per distinct key (a check batch has a handful)."""
    found: dict[Key, History] = {}
    for endpoint, steps in set(keys):
        query = _completed(endpoint)
        if steps:
            try:
                value: Any = int(steps)
            except ValueError:
                value = steps
            query = query.filter(arguments__steps=value)
        else:
            query = query.exclude(arguments__has_key="steps")
        rows = query.values_list(
            "submitted_at", "started_at", "finished_at", "queue_position_first"
        )[: settings.ETA_HISTORY_SIZE]
        found[(endpoint, steps)] = history_from(rows) or default_history(endpoint)
    return found


def _completed(endpoint: str) -> QuerySet[Training]:
    return Training.objects.filter(
        endpoint=endpoint,
        outcome=TrainingOutcome.COMPLETED,
        submitted_at__isnull=False,
        started_at__isnull=False,
    ).order_by("-finished_at")


def drained(
    old_position: int | None, new_position: int | None, seconds: float, old_rate: float | None
) -> float | None:
    """The drain rate (positions per minute) after seeing the position move in ``seconds``."""
    if old_position is None or new_position is None or seconds <= 0:
        return old_rate
    seen = max(0, old_position - new_position) * 60 / seconds
    if old_rate is None:
        return seen if new_position < old_position else None
    weight = 1 - math.exp(-seconds / DRAIN_MEMORY_SECONDS)
    return old_rate + weight * (seen - old_rate)


@dataclass(frozen=True)
class Estimate:
    at: datetime | None = None
    low: datetime | None = None
    high: datetime | None = None
    late: bool = False

    def remaining(self, now: datetime) -> float | None:
        return None if self.at is None else max(0.0, (self.at - now).total_seconds())


def _estimate(
    training: Training, history: History, now: datetime, progress: float | None
) -> Estimate:
    """The estimate of ``training`` from ``history`` (``progress``: the share of steps done)."""
    runs = history.runs
    ran = max(0.0, (now - (training.started_at or now)).total_seconds())
    if training.fal_status == FalStatus.IN_PROGRESS:
        if ran > quantile(runs, HIGH_Q):
            return Estimate(late=True)
        longer = [r - ran for r in runs if r > ran] or [0.0]
        mid, low, high = (quantile(longer, q) for q in (0.5, LOW_Q, HIGH_Q))
        if progress is not None and progress >= 0.05 and ran > 0:
            # The job's own pace, trusted more the further it has gone.
            paced = ran * (1 - progress) / progress
            weight = math.sqrt(progress)
            mid = weight * paced + (1 - weight) * mid
            low, high = min(low, mid), max(high, mid)
        return _at(now, mid, low, high)
    if training.fal_status in (FalStatus.IN_QUEUE, FalStatus.NOT_SENT, FalStatus.SUBMITTING):
        drain = training.queue_drain_per_minute
        per_position = 60 / drain if drain and drain > 0 else history.per_position
        queue = ((training.queue_position or 0) + 0.5) * per_position
        run_mid, run_low, run_high = (quantile(runs, q) for q in (0.5, LOW_Q, HIGH_Q))
        return _at(now, queue + run_mid, queue * QUEUE_LOW + run_low, queue * QUEUE_HIGH + run_high)
    return Estimate()


def _at(now: datetime, mid: float, low: float, high: float) -> Estimate:
    at, earliest, latest = (now + timedelta(seconds=seconds) for seconds in (mid, low, high))
    return Estimate(at, earliest, latest)


# The fields ``refresh`` writes (a check's bulk UPDATE lists them).
FIELDS = ("queue_drain_per_minute", "eta_at", "eta_low", "eta_high", "eta_late")
# A new estimate within this of the stored one is not written (no UPDATE per check).
SETTLED = timedelta(seconds=30)


def refresh(
    training: Training,
    history: History,
    *,
    now: datetime,
    old_position: int | None = None,
    seen_seconds: float | None = None,
    logs_fresh: bool = False,
) -> bool:
    """Recompute the training's estimate in place; True when a stored field changed.

    ``logs_fresh``: ``logs_tail`` was fetched by this check. Between fetches the estimate
    made from the last "step N/M" line stands, unless history now says the job is late.
    """
    before = tuple(getattr(training, name) for name in FIELDS)
    if seen_seconds is not None:
        training.queue_drain_per_minute = drained(
            old_position, training.queue_position, seen_seconds, training.queue_drain_per_minute
        )
    # The share of steps done, from the trainer's last "step N/M" log line.
    steps = _STEP.findall(training.logs_tail or "")
    done, total = (int(n) for n in steps[-1]) if steps else (0, 0)
    progress = done / total if 0 < done <= total else None
    found = _estimate(training, history, now, progress if logs_fresh else None)
    stands = (
        training.fal_status == FalStatus.IN_PROGRESS
        and progress is not None
        and not logs_fresh
        and training.eta_at is not None
        and not found.late
    )
    stored = (training.eta_at, training.eta_low, training.eta_high)
    moved = training.eta_late != found.late or any(
        abs(old - new) >= SETTLED if old and new else old != new
        for old, new in zip(stored, (found.at, found.low, found.high), strict=True)
    )
    if not stands and moved:
        training.eta_at, training.eta_low, training.eta_high = found.at, found.low, found.high
        training.eta_late = found.late
    return before != tuple(getattr(training, name) for name in FIELDS)


def as_estimate(training: Training | None) -> Estimate | None:
    """The stored estimate of an active training (None: nothing known or finished)."""
    if training is None or training.finished_at is not None:
        return None
    if training.eta_late:
        return Estimate(late=True)
    if training.eta_at is None:
        return None
    return Estimate(training.eta_at, training.eta_low, training.eta_high)


def as_json(training: Training | None) -> dict[str, Any] | None:
    found = as_estimate(training)
    if found is None:
        return None
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(found).items()}


def words(training: Training | None, now: datetime) -> str:
    """For staff: "ready around 14:32 UTC, 10–18 min", "taking longer than usual" or ""."""
    found = as_estimate(training)
    if found is None:
        return ""
    if found.late or found.at is None:
        return _("taking longer than usual")
    low = max(0, round(((found.low or found.at) - now).total_seconds() / 60))
    high = max(low, round(((found.high or found.at) - now).total_seconds() / 60))
    return _("ready around %(time)s UTC, %(low)s–%(high)s min") % {
        "time": found.at.astimezone(UTC).strftime("%H:%M"),
        "low": low,
        "high": high,
    }


def p50_by_trainer() -> list[dict[str, Any]]:
    rows = []
    for training_type, endpoint in ENDPOINTS.items():
        recent = _completed(endpoint).values_list("submitted_at", "started_at", "finished_at")
        times = [(q, s, f) for q, s, f in recent[: settings.ETA_HISTORY_SIZE] if q and s and f]
        queued = sorted((s - q).total_seconds() for q, s, _f in times)
        ran = sorted((f - s).total_seconds() for _q, s, f in times)
        rows.append(
            {
                "trainer": training_type,
                "endpoint": endpoint,
                "count": len(times),
                "queue_p50": quantile(queued, 0.5) if queued else None,
                "run_p50": quantile(ran, 0.5) if ran else None,
            }
        )
    return rows
