"""The notifications app's own django-q2 schedule, created or updated by ``migrate``.

The check run sweeps the outbox when it ends; this schedule runs the same sweep on the
notifications cluster itself once a minute (merging stuck alerts, and the net under
the relay), whatever the check runs are doing.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django_q.models import Schedule

OUTBOX_SWEEP = "notifications: sweep the outbox"
PROGRESS_SWEEP = "notifications: push due progress messages"


def ensure_schedules(**kwargs: Any) -> None:
    """post_migrate receiver: set-up twice leaves one sweep."""
    Schedule.objects.using(kwargs.get("using", "default")).update_or_create(
        name=OUTBOX_SWEEP,
        defaults={
            "func": "notifications.delivery.sweep",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
            "cluster": settings.NOTIFICATION_CLUSTER,
        },
    )
    # The owner's progress messages whose edit waited for its interval (docs/eta.md).
    Schedule.objects.using(kwargs.get("using", "default")).update_or_create(
        name=PROGRESS_SWEEP,
        defaults={
            "func": "notifications.progress.sweep",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
            "cluster": settings.NOTIFICATION_CLUSTER,
        },
    )
