"""Startup restore: after the worker starts, every active training is checked at once.

Nothing is held in memory, so nothing is "restored" but the urgency: every active
training (whatever its age, with or without a start time) becomes due now, and a run
is enqueued immediately instead of waiting for the next scheduled one.

Starting a second cluster while another one runs costs at most one extra check of
the trainings the running one had just leased: a restore is rare, a missed one is not.
The notifications cluster (Q_CLUSTER_NAME=notifications) does not restore anything.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from monitoring.models import CheckRun, Training

logger = logging.getLogger("monitoring")


def restore_monitoring(*, enqueue: bool = True) -> int:
    """Make every active training due now and enqueue a run; returns how many."""
    count = Training.objects.filter(finished_at__isnull=True).update(next_check_at=timezone.now())
    if enqueue:
        from django_q.tasks import async_task

        async_task(
            "monitoring.tasks.run_check", CheckRun.Kind.RESTORE, task_name="startup restore check"
        )
    logger.info("✅ Мониторинг восстановлен для %s аватаров", count)
    return count
