"""Running totals: counters that only ever go up, kept in the database.

Prometheus counters must never decrease, and every web and worker process must
report the same numbers, so a counter cannot be a per-process variable, nor a count
of rows that retention later prunes. Where something happens (a fal error
classified, a webhook delivery recorded, a Telegram answer recorded) the code calls
``totals.add(name, labels)``: one upsert on one row per (name, labels).

This app imports nothing of ``monitoring`` or ``notifications``, so both can use it
without an upward import (``notifications`` never imports ``monitoring``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping


def labels_text(labels: Mapping[str, str] | None) -> str:
    """The stored form of a label set: JSON with sorted keys (one row per distinct set)."""
    return json.dumps({k: str(v) for k, v in (labels or {}).items()}, sort_keys=True)


def add(name: str, labels: Mapping[str, str] | None = None, amount: int = 1) -> None:
    """Add ``amount`` to the running total ``name`` with these labels.

    Inside a transaction it commits or rolls back with what it counts (a webhook
    delivery row that rolls back is counted as the failed row written instead).
    One statement, safe under concurrency: INSERT … ON CONFLICT DO UPDATE adds to
    the row another process may have just created.
    """
    from django.db import connections, router

    from totals.models import RunningTotal

    alias = router.db_for_write(RunningTotal)
    table = connections[alias].ops.quote_name(RunningTotal._meta.db_table)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {table} ("name", "labels", "value") VALUES (%s, %s, %s) '
            f'ON CONFLICT ("name", "labels") DO UPDATE SET "value" = {table}."value" + excluded."value"',
            [name, labels_text(labels), amount],
        )


def current() -> dict[str, dict[tuple[tuple[str, str], ...], int]]:
    """Every running total: name → {sorted label pairs: value}. One query."""
    from totals.models import RunningTotal

    found: dict[str, dict[tuple[tuple[str, str], ...], int]] = {}
    for name, labels, value in RunningTotal.objects.values_list("name", "labels", "value"):
        key = tuple(sorted(json.loads(labels).items()))
        found.setdefault(name, {})[key] = value
    return found
