"""Pruning old records, daily (``schedules.PRUNE``), ages from ``RETENTION_*_DAYS``.

Nothing of an active training is pruned: staff need that evidence while it runs or is stuck.
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


# Apps above this one register what they keep from their AppConfig.ready().
EXTRA_PRUNABLE: list[Callable[[datetime], dict[str, QuerySet[Any]]]] = []


def prunable(now: datetime | None = None) -> dict[str, QuerySet[Any]]:
    now = now or timezone.now()

    def days_ago(days: int) -> datetime:
        return now - timedelta(days=days)

    deliveries = WebhookDelivery.objects.filter(
        received_at__lt=days_ago(settings.RETENTION_WEBHOOK_DELIVERY_DAYS)
    ).filter(Q(training__isnull=True) | Q(training__finished_at__isnull=False))
    events = AvatarEvent.objects.filter(
        created_at__lt=days_ago(settings.RETENTION_FINISHED_EVENTS_DAYS)
    ).filter(
        # Events of a finished attempt, or avatar-level events of an avatar that
        # is not training right now.
        Q(training__finished_at__isnull=False)
        | (Q(training__isnull=True) & ~Q(avatar__status=AvatarStatus.TRAINING))
    )
    # The newest run is the heartbeat: keep it however old, or a quiet worker would
    # look like one that never ran.
    runs = CheckRun.objects.filter(
        started_at__lt=days_ago(settings.RETENTION_CHECK_RUN_DAYS)
    ).exclude(pk__in=CheckRun.objects.order_by("-started_at").values("pk")[:1])
    from django_q.models import Task

    found: dict[str, QuerySet[Any]] = {
        "webhook_deliveries": deliveries,
        "avatar_events": events,
        "check_runs": runs,
        "task_results": Task.objects.filter(
            stopped__lt=days_ago(settings.RETENTION_TASK_RESULT_DAYS)
        ),
        **files.superseded(now),
    }
    for more in EXTRA_PRUNABLE:
        found.update(more(now))
    return found


def count(now: datetime | None = None) -> dict[str, int]:
    return {name: qs.count() for name, qs in prunable(now).items()}


def prune(now: datetime | None = None) -> dict[str, int]:
    """How many rows of each kind went (the task's result)."""
    deleted: dict[str, int] = {}
    for name, queryset in prunable(now).items():
        with transaction.atomic():
            # Delete by primary key: DELETE with joins through a nullable FK is
            # not allowed by every backend.
            ids = list(queryset.values_list("pk", flat=True))
            model = queryset.model
            deleted[name] = sum(
                model.objects.filter(pk__in=ids[i : i + 1000]).delete()[1].get(model._meta.label, 0)
                for i in range(0, len(ids), 1000)
            )
    deleted["avatar_file_temporaries"] = files.stale_temporaries()
    return _logged(deleted)


def _logged(deleted: dict[str, int]) -> dict[str, int]:
    logger.info("Retention: pruned %s", ", ".join(f"{k}={v}" for k, v in deleted.items()))
    return deleted


def prune_refused_webhooks(now: datetime | None = None) -> dict[str, int]:
    """Hourly; accepted deliveries keep the daily rule."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.RETENTION_REFUSED_WEBHOOK_HOURS)
    refused = WebhookDelivery.objects.filter(
        outcome__in=(WebhookOutcome.REJECTED, WebhookOutcome.REPLAY), received_at__lt=cutoff
    ).delete()[0]
    counts = RefusedWebhookCount.objects.filter(minute__lt=cutoff).delete()[0]
    return _logged({"refused_webhook_deliveries": refused, "refused_webhook_counts": counts})
