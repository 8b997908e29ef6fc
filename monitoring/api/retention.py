"""What the bot API keeps, and for how long (registered with ``monitoring.ops.retention``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from monitoring.api.models import ApiCall, CallbackStatus, EventCallback, IdempotencyKey


def prunable(now: datetime) -> dict[str, QuerySet[Any]]:
    calls_before = now - timedelta(days=settings.RETENTION_API_CALL_DAYS)
    return {
        "api_calls": ApiCall.objects.filter(at__lt=calls_before),
        "api_idempotency_keys": IdempotencyKey.objects.filter(
            created_at__lt=now - timedelta(hours=settings.API_IDEMPOTENCY_KEY_HOURS)
        ),
        # A callback still being retried is kept whatever its age.
        "api_event_callbacks": EventCallback.objects.filter(created_at__lt=calls_before).exclude(
            status=CallbackStatus.PENDING
        ),
    }
