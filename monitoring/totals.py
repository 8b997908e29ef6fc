"""Running totals: counters that only ever go up, kept in the database.

Where something happens (a fal error classified, a webhook delivery recorded, a
Telegram answer recorded) the code calls ``add(name, labels)``; ``/metrics`` reads
them all with ``current()``. ``notifications`` never imports ``monitoring``, so it
announces each recorded send with its ``send_recorded`` signal and the receiver here
counts it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F

from monitoring.models import RunningTotal


def labels_text(labels: Mapping[str, str] | None) -> str:
    """The stored form of a label set: JSON with sorted keys (one row per distinct set)."""
    return json.dumps({k: str(v) for k, v in (labels or {}).items()}, sort_keys=True)


def add(name: str, labels: Mapping[str, str] | None = None, amount: int = 1) -> None:
    """Add ``amount`` to the running total ``name`` with these labels.

    Inside a transaction it commits or rolls back with what it counts. The row
    exists after the first time, so this is one UPDATE; the first time, a concurrent
    creator makes our INSERT fail on the unique constraint, and we add to its row.
    """
    key = labels_text(labels)
    counted = RunningTotal.objects.filter(name=name, labels=key)
    if counted.update(value=F("value") + amount):
        return
    try:
        with transaction.atomic():
            RunningTotal.objects.create(name=name, labels=key, value=amount)
    except IntegrityError:
        counted.update(value=F("value") + amount)


def current() -> dict[str, dict[tuple[tuple[str, str], ...], int]]:
    """Every running total: name → {sorted label pairs: value}. One query."""
    found: dict[str, dict[tuple[tuple[str, str], ...], int]] = {}
    for name, labels, value in RunningTotal.objects.values_list("name", "labels", "value"):
        key = tuple(sorted(json.loads(labels).items()))
        found.setdefault(name, {})[key] = value
    return found


def count_notification_send(sender: Any, *, outcome: str, **kwargs: Any) -> None:
    """Receiver of ``notifications.signals.send_recorded``."""
    add("notification_sends", {"result": outcome})
