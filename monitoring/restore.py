"""Startup restore: after the worker starts, every active training is checked at once.
See docs/architecture.md#the-periodic-check.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone, translation
from django.utils.translation import ngettext

from monitoring.models import CheckRun, FalStatus, Training

logger = logging.getLogger("monitoring")


def restore_monitoring(*, enqueue: bool = True) -> int:
    """Make every active training due now (but held starts, and those another host has
    just checked) and enqueue a run; returns how many are active."""
    now = timezone.now()
    active = Training.objects.filter(finished_at__isnull=True).exclude(fal_status=FalStatus.HELD)
    count = active.count()
    recently = now - timedelta(seconds=settings.CHECK_INTERVAL_SECONDS)
    active.exclude(last_checked_at__gte=recently).update(next_check_at=now)
    if enqueue:
        from django_q.tasks import async_task

        async_task(
            "monitoring.tasks.run_check", CheckRun.Kind.RESTORE, task_name="startup restore check"
        )
    # The operator's log line is Russian whatever the process's language; the plural
    # ("для 1 аватара", "для 5 аватаров") comes from the catalogue.
    with translation.override("ru"):
        line = ngettext(
            "✅ Monitoring restored for %(n)s avatar",
            "✅ Monitoring restored for %(n)s avatars",
            count,
        ) % {"n": count}
    logger.info(line)
    return count
