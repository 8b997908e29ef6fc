"""Running totals: counters and histograms that only ever go up, kept in the database,
so any process answers ``/metrics`` and ``prune`` lowers nothing.
See docs/operations.md#what-the-service-level-figures-measure.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F

from monitoring.models import RunningTotal, WebhookDelivery


def labels_text(labels: Mapping[str, str] | None) -> str:
    """The stored form of a label set: JSON with sorted keys (one row per distinct set)."""
    return json.dumps({k: str(v) for k, v in (labels or {}).items()}, sort_keys=True)


def add(
    name: str, labels: Mapping[str, str] | None = None, amount: int = 1, *, sum_ms: int = 0
) -> None:
    """Add ``amount`` (and ``sum_ms``) to the total ``name``; the first time, a concurrent
    creator makes our INSERT fail on the unique constraint, and we add to its row."""
    key = labels_text(labels)
    counted = RunningTotal.objects.filter(name=name, labels=key)
    changes = {"value": F("value") + amount}
    if sum_ms:
        changes["sum_ms"] = F("sum_ms") + sum_ms
    if counted.update(**changes):
        return
    try:
        with transaction.atomic():
            RunningTotal.objects.create(name=name, labels=key, value=amount, sum_ms=sum_ms)
    except IntegrityError:
        counted.update(**changes)


@contextmanager
def together() -> Iterator[None]:
    """A few running totals in one short transaction of their own, whose commit does not
    wait for the disk on PostgreSQL (a figure is not worth a flush per event)."""
    outermost = transaction.get_autocommit()
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


Key = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Reading:
    """Every running total: name → {sorted label pairs: value}, and the sums likewise."""

    values: dict[str, dict[Key, int]]
    sums_ms: dict[str, dict[Key, int]]


def read() -> Reading:
    reading = Reading({}, {})
    rows = RunningTotal.objects.values_list("name", "labels", "value", "sum_ms")
    for name, labels, value, sum_ms in rows:
        key = tuple(sorted(json.loads(labels).items()))
        reading.values.setdefault(name, {})[key] = value
        reading.sums_ms.setdefault(name, {})[key] = sum_ms
    return reading


@dataclass(frozen=True)
class Histogram:
    """A histogram kept as running totals: its name and bucket upper bounds (seconds)."""

    name: str
    buckets: tuple[float, ...]

    @property
    def bucket_total(self) -> str:
        return f"{self.name}_bucket"


def bound_text(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``le="120.0"``, ``le="+Inf"``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


# From fal's completion to the owner's message sent: the objective is 2 minutes.
OWNER_TOLD = Histogram(
    "owner_told_seconds", (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600)
)
# From the start (the avatar went to training) to ready.
TIME_TO_READY = Histogram(
    "time_to_ready_seconds",
    (60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 21600, 43200, 86400),
)
# From fal's acceptance of the submit to the job running.
FAL_QUEUE = Histogram(
    "fal_queue_seconds", (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
)


def observe(histogram: Histogram, labels: Mapping[str, str], value: float) -> None:
    """Count ``value`` (seconds; a clock's skew below 0 counts as 0) in ``histogram``."""
    value = max(0.0, value)
    index = bisect.bisect_left(histogram.buckets, value)
    bound = "+Inf" if index == len(histogram.buckets) else bound_text(histogram.buckets[index])
    add(histogram.bucket_total, {**labels, "le": bound}, sum_ms=round(value * 1000))


def count_notification_send(sender: Any, *, outcome: str, **kwargs: Any) -> None:
    """Receiver of ``notifications.delivery.send_recorded``."""
    add("notification_sends", {"result": outcome})


def observe_owner_told(
    sender: Any, *, notification: Any, finished_at: datetime, sent_at: datetime, **kwargs: Any
) -> None:
    """Receiver of ``notifications.delivery.owner_told``: how long the owner waited since
    the earlier of what the finish knew and fal's first signed webhook for the training."""
    signed = WebhookDelivery.objects.first_signed_at(training_id=notification.training_id)
    start = min(finished_at, signed) if signed is not None else finished_at
    observe(OWNER_TOLD, {"kind": notification.kind}, (sent_at - start).total_seconds())
