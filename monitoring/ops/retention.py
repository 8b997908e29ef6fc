"""Pruning old records, run by django-q2 once a day (``schedules.PRUNE``).

What goes and when is set by the ``RETENTION_*_DAYS`` settings. Nothing that
belongs to an active training is ever pruned: its deliveries and events are the
evidence staff need while it is still running or stuck.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from monitoring import files
from monitoring.models import (
    AvatarEvent,
    AvatarStatus,
    CheckRun,
    RefusedWebhookCount,
    WebhookDelivery,
    WebhookOutcome,
)

logger = logging.getLogger("monitoring")


# Apps above this one add what they keep (``name -> queryset``, for ``now``) from their
# AppConfig.ready(): retention then never imports them (the bot API registers here).
EXTRA_PRUNABLE: list[Callable[[datetime], dict[str, QuerySet[Any]]]] = []


def _days_ago(days: int, now: datetime) -> datetime:
    return now - timedelta(days=days)


def prunable(now: datetime | None = None) -> dict[str, QuerySet[Any]]:
    """The querysets that would be deleted now, by kind (shared by prune and --dry-run)."""
    now = now or timezone.now()
    deliveries = WebhookDelivery.objects.filter(
        received_at__lt=_days_ago(settings.RETENTION_WEBHOOK_DELIVERY_DAYS, now)
    ).filter(Q(training__isnull=True) | Q(training__finished_at__isnull=False))
    events = AvatarEvent.objects.filter(
        created_at__lt=_days_ago(settings.RETENTION_FINISHED_EVENTS_DAYS, now)
    ).filter(
        # Events of a finished attempt, or avatar-level events of an avatar that
        # is not training right now.
        Q(training__finished_at__isnull=False)
        | (Q(training__isnull=True) & ~Q(avatar__status=AvatarStatus.TRAINING))
    )
    runs = CheckRun.objects.filter(started_at__lt=_days_ago(settings.RETENTION_CHECK_RUN_DAYS, now))
    # The newest run is the heartbeat: keep it however old, or a quiet worker would
    # look like one that never ran.
    newest = CheckRun.objects.order_by("-started_at").values_list("pk", flat=True).first()
    if newest is not None:
        runs = runs.exclude(pk=newest)
    from django_q.models import Task

    tasks = Task.objects.filter(stopped__lt=_days_ago(settings.RETENTION_TASK_RESULT_DAYS, now))
    found: dict[str, QuerySet[Any]] = {
        "webhook_deliveries": deliveries,
        "avatar_events": events,
        "check_runs": runs,
        "task_results": tasks,
        # Files of attempts a newer attempt replaced (monitoring.files).
        **files.superseded(now),
    }
    for more in EXTRA_PRUNABLE:
        found.update(more(now))
    return found


def count(now: datetime | None = None) -> dict[str, int]:
    return {name: qs.count() for name, qs in prunable(now).items()}


def prune(now: datetime | None = None) -> dict[str, int]:
    """Delete what is old and finished; how many rows of each kind went (the task's result)."""
    deleted: dict[str, int] = {}
    for name, queryset in prunable(now).items():
        with transaction.atomic():
            # Delete by primary key: DELETE with joins through a nullable FK is
            # not allowed by every backend.
            ids = list(queryset.values_list("pk", flat=True))
            model = queryset.model
            total = 0
            for start in range(0, len(ids), 1000):
                total += (
                    model.objects.filter(pk__in=ids[start : start + 1000])
                    .delete()[1]
                    .get(model._meta.label, 0)
                )
        deleted[name] = total
    # Temporary files of copies a crash interrupted (monitoring.files).
    deleted["avatar_file_temporaries"] = files.stale_temporaries()
    logger.info("Retention: pruned %s", ", ".join(f"{k}={v}" for k, v in deleted.items()))
    return deleted


def prune_refused_webhooks(now: datetime | None = None) -> dict[str, int]:
    """Hourly: refused deliveries and their per-minute counts older than
    ``RETENTION_REFUSED_WEBHOOK_HOURS``. Accepted deliveries keep the daily rule."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.RETENTION_REFUSED_WEBHOOK_HOURS)
    refused = WebhookDelivery.objects.filter(
        outcome__in=(WebhookOutcome.REJECTED, WebhookOutcome.REPLAY), received_at__lt=cutoff
    ).delete()[0]
    counts = RefusedWebhookCount.objects.filter(minute__lt=cutoff).delete()[0]
    deleted = {"refused_webhook_deliveries": refused, "refused_webhook_counts": counts}
    logger.info("Retention: pruned %s", ", ".join(f"{k}={v}" for k, v in deleted.items()))
    return deleted
