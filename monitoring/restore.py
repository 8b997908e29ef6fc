"""Startup restore: after the worker starts, every active training is checked at once.

Nothing is held in memory, so nothing is "restored" but the urgency: every active
training (whatever its age, with or without a start time) becomes due now, and a run
is enqueued immediately instead of waiting for the next scheduled one.

Only trainings not checked within the last interval are made due: a second host
starting while another one runs leaves what the running one has just checked on its
schedule, so each training is still checked once per interval. The notifications cluster (Q_CLUSTER_NAME=notifications) does not restore anything.

The restore run leases what it checks only until the next scheduled run
(``next_scheduled_check``), not a full interval from its own arbitrary start: the
scheduled cadence goes on as if nothing had happened, instead of finding nothing due
and leaving every training unchecked for up to two intervals.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone, translation
from django.utils.translation import ngettext
from django_q.models import Schedule

from monitoring.models import CheckRun, FalStatus, Training
from monitoring.ops.schedules import PERIODIC_CHECK

logger = logging.getLogger("monitoring")


def restore_monitoring(*, enqueue: bool = True) -> int:
    """Make every active training due now and enqueue a run; returns how many are active.

    One checked within the last interval (by another host) keeps its place. Held starts
    were never sent: nothing to check (``monitoring.billing`` sends them).
    """
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


def next_scheduled_check() -> datetime | None:
    """When django-q2's scheduler runs the periodic check next (None: not scheduled)."""
    return Schedule.objects.filter(name=PERIODIC_CHECK).values_list("next_run", flat=True).first()
