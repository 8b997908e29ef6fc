"""The notifications cluster's own once-a-minute sweeps (the net under the relay), created
or updated by ``migrate``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django_q.models import Schedule

OUTBOX_SWEEP = "notifications: sweep the outbox"
PROGRESS_SWEEP = "notifications: push due progress messages"


def ensure_schedules(**kwargs: Any) -> None:
    """post_migrate receiver: set-up twice leaves one sweep."""
    for name, func in (
        (OUTBOX_SWEEP, "notifications.delivery.sweep"),
        (PROGRESS_SWEEP, "notifications.progress.sweep"),
    ):
        Schedule.objects.using(kwargs.get("using", "default")).update_or_create(
            name=name,
            defaults={
                "func": func,
                "schedule_type": Schedule.MINUTES,
                "minutes": 1,
                "repeats": -1,
                "cluster": settings.NOTIFICATION_CLUSTER,
            },
        )
