"""Event callbacks the bot is not getting (being retried, or ended undelivered in the last
24 hours): one definition for /metrics and the banner. docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils.translation import ngettext
from prometheus_client.core import GaugeMetricFamily

from monitoring.api.models import CallbackStatus, EventCallback
from monitoring.ops.attention import Problem

ENDED_WINDOW = timedelta(hours=24)
ENDED_UNDELIVERED = (CallbackStatus.FAILED, CallbackStatus.REFUSED, CallbackStatus.GIVEN_UP)


def failing(now: datetime) -> Q:
    return Q(status=CallbackStatus.PENDING, attempts__gt=0) | Q(
        status__in=ENDED_UNDELIVERED, created_at__gte=now - ENDED_WINDOW
    )


def failing_count(now: datetime) -> int:
    return EventCallback.objects.filter(failing(now)).count()


def problems(now: datetime) -> list[Problem]:
    """The banner's line, from EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD failing callbacks."""
    count = failing_count(now)
    if count < settings.EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD:
        return []
    return [
        Problem(
            "callbacks_failing",
            ngettext(
                "%(n)s event callback to the bot is failing: is its receiver up?",
                "%(n)s event callbacks to the bot are failing: is its receiver up?",
                count,
            )
            % {"n": count},
            reverse("admin:api_eventcallback_changelist") + "?failing=yes",
        )
    ]


def figures(now: datetime) -> Iterator[GaugeMetricFamily]:
    """/metrics: the count, and the banner's threshold beside it."""
    yield GaugeMetricFamily(
        "avatar_monitor_event_callbacks_failing",
        "Event callbacks to API clients being retried, or ended undelivered in the last 24 hours.",
        value=failing_count(now),
    )
    yield GaugeMetricFamily(
        "avatar_monitor_event_callbacks_failing_threshold",
        "The admin's banner shows failing event callbacks from this many "
        "(EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD).",
        value=settings.EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD,
    )
