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


# (name, task, Schedule type, minutes): "I" every N minutes, "H" hourly, "D" daily;
# a callable is read at migrate time (settings).
SCHEDULES: list[tuple[str, str, str, Any]] = [
    (PERIODIC_CHECK, "monitoring.tasks.run_check", "I", _check_minutes),
    (PRUNE, "monitoring.ops.retention.prune", "D", None),
    (RECONCILE, "monitoring.tasks.reconcile_fal", "D", None),
    (EVENT_CALLBACK_SWEEP, "monitoring.api.callbacks.sweep", "I", 1),
    # Refused deliveries are anyone's to send: kept hours, not days.
    (PRUNE_REFUSED_WEBHOOKS, "monitoring.ops.retention.prune_refused_webhooks", "H", None),
    # A web worker killed mid-delivery leaves the delivery "received", and a delivery
    # may arrive before its request id is stored: the sweep processes both.
    (STRANDED_WEBHOOKS, "monitoring.fal.deliveries.sweep", "I", 1),
    (KEEP_FILES, "monitoring.files.sweep", "I", 1),
    (COSTS, "monitoring.tasks.look_up_costs", "I", 1),
    (BALANCE, "monitoring.tasks.check_balance", "I", _balance_minutes),
]


def ensure_schedules(**kwargs: Any) -> None:
    """post_migrate receiver: set-up twice leaves one schedule of each name."""
    from django_q.models import Schedule

    using = kwargs.get("using", "default")
    for name, func, schedule_type, minutes in SCHEDULES:
        fields = {"func": func, "schedule_type": schedule_type, "repeats": -1}
        if minutes is not None:
            fields["minutes"] = minutes() if callable(minutes) else minutes
        Schedule.objects.using(using).update_or_create(name=name, defaults=fields)
