"""django-q2 schedules, created or updated by ``migrate``, by name (other apps append theirs).

Missed runs are never replayed. See docs/operations.md#the-worker.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

PERIODIC_CHECK = "monitoring: periodic status check"
PRUNE = "monitoring: prune old records"
RECONCILE = "monitoring: reconcile with fal's record"
EVENT_CALLBACK_SWEEP = "api: send due event callbacks"
PRUNE_REFUSED_WEBHOOKS = "monitoring: prune refused webhook deliveries"
STRANDED_WEBHOOKS = "monitoring: process webhook deliveries left by a crash"
KEEP_FILES = "monitoring: keep avatar files (retries, lost hand-overs)"
COSTS = "monitoring: look up what fal billed"
BALANCE = "monitoring: read fal's balance (alerts, held starts)"


def _balance_minutes() -> int:
    # Under a minute, the task itself reads every FAL_BALANCE_CHECK_SECONDS in its minute.
    return max(1, settings.FAL_BALANCE_CHECK_SECONDS // 60)


def _check_minutes() -> int:
    # django-q2's MINUTES schedules count whole minutes.
    return max(1, round(settings.CHECK_INTERVAL_SECONDS / 60))


# name -> the Schedule fields; callables are evaluated at migrate time (settings).
SCHEDULES: list[dict[str, Any]] = [
    {
        "name": PERIODIC_CHECK,
        "func": "monitoring.tasks.run_check",
        "schedule_type": "I",  # Schedule.MINUTES
        "minutes": _check_minutes,
        "repeats": -1,
    },
    # Retention (staff tools): old deliveries, events, heartbeats and task results.
    {
        "name": PRUNE,
        "func": "monitoring.ops.retention.prune",
        "schedule_type": "D",  # Schedule.DAILY
        "repeats": -1,
    },
    # fal's record against our trainings: billed requests nobody follows, stale ones.
    {
        "name": RECONCILE,
        "func": "monitoring.tasks.reconcile_fal",
        "schedule_type": "D",  # Schedule.DAILY
        "repeats": -1,
    },
    # Event callbacks to API clients: retries with backoff, and lost hand-overs.
    {
        "name": EVENT_CALLBACK_SWEEP,
        "func": "monitoring.api.callbacks.sweep",
        "schedule_type": "I",  # Schedule.MINUTES
        "minutes": 1,
        "repeats": -1,
    },
    # Refused deliveries are anyone's to send: kept hours, not days.
    {
        "name": PRUNE_REFUSED_WEBHOOKS,
        "func": "monitoring.ops.retention.prune_refused_webhooks",
        "schedule_type": "H",  # Schedule.HOURLY
        "repeats": -1,
    },
    # A web worker killed mid-delivery leaves the delivery "received", and a delivery
    # may arrive before its request id is stored: the sweep processes both.
    {
        "name": STRANDED_WEBHOOKS,
        "func": "monitoring.fal.deliveries.sweep",
        "schedule_type": "I",  # Schedule.MINUTES
        "minutes": 1,
        "repeats": -1,
    },
    # Copies of trained files that failed (retried with backoff) or lost their task.
    {
        "name": KEEP_FILES,
        "func": "monitoring.files.sweep",
        "schedule_type": "I",  # Schedule.MINUTES
        "minutes": 1,
        "repeats": -1,
    },
    # Money (monitoring.billing): billing events of finished trainings, and the balance.
    {
        "name": COSTS,
        "func": "monitoring.tasks.look_up_costs",
        "schedule_type": "I",  # Schedule.MINUTES
        "minutes": 1,
        "repeats": -1,
    },
    {
        "name": BALANCE,
        "func": "monitoring.tasks.check_balance",
        "schedule_type": "I",  # Schedule.MINUTES
        "minutes": _balance_minutes,
        "repeats": -1,
    },
]


def ensure_schedules(**kwargs: Any) -> None:
    """post_migrate receiver: set-up twice leaves one schedule of each name."""
    from django_q.models import Schedule

    using = kwargs.get("using", "default")
    for spec in SCHEDULES:
        fields = {key: value() if callable(value) else value for key, value in spec.items()}
        name = fields.pop("name")
        Schedule.objects.using(using).update_or_create(name=name, defaults=fields)
