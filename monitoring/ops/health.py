"""``GET /healthz`` (and HEAD): is the database there, and are the checks and messages on time?

Anyone may ask, so without credentials it says only ``ok`` and what is late.
See docs/operations.md#health.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Max, Q
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from monitoring.models import CheckRun, Training, WorkerHeartbeat
from notifications import delivery
from notifications.models import Notification, NotificationStatus

logger = logging.getLogger("monitoring")

# Runs started by the worker. A manual run from a command proves nothing about it.
WORKER_RUN_KINDS = (CheckRun.Kind.SCHEDULED, CheckRun.Kind.RESTORE)
LATE_AFTER_INTERVALS = 3
NOTIFICATIONS_LATE_AFTER_INTERVALS = 2
# What an unauthenticated caller sees besides ``ok``.
PUBLIC_FIELDS = frozenset({"database", "check_late", "notifications_late"})
# ``monitoring.worker.cluster.ROLES`` (which imports this module).
WORKER_ROLES = ("checks", "notifications")


@dataclass(frozen=True)
class Heartbeat:
    last_run: CheckRun | None
    age_seconds: float | None
    late: bool
    late_after_seconds: int


def late_after_seconds() -> int:
    return LATE_AFTER_INTERVALS * settings.CHECK_INTERVAL_SECONDS


def heartbeat(now: datetime | None = None) -> Heartbeat:
    """``started_at`` rather than ``finished_at``: a long run in progress still proves the
    worker is alive, and a run that crashed leaves its start behind."""
    now = now or timezone.now()
    limit = late_after_seconds()
    last = CheckRun.objects.filter(kind__in=WORKER_RUN_KINDS).order_by("-started_at").first()
    if last is None:
        return Heartbeat(None, None, True, limit)
    age = max(0.0, (now - last.started_at).total_seconds())
    return Heartbeat(last, age, age > limit, limit)


@dataclass(frozen=True)
class NotificationsLate:
    late: bool
    waiting: int
    late_after_seconds: int


def notifications_late_after_seconds() -> int:
    return NOTIFICATIONS_LATE_AFTER_INTERVALS * settings.CHECK_INTERVAL_SECONDS


def notifications_late(now: datetime | None = None) -> NotificationsLate:
    """Due and unclaimed: pending since ``next_attempt_at``, or claimed by a worker whose
    lease ran out at ``lease_until``. Never late while sending is paused (its own flag)."""
    now = now or timezone.now()
    limit = notifications_late_after_seconds()
    if sending_paused():
        return NotificationsLate(False, 0, limit)
    since = now - timedelta(seconds=limit)
    waiting = Notification.objects.filter(
        Q(status=NotificationStatus.PENDING, next_attempt_at__lt=since)
        | Q(status=NotificationStatus.SENDING, lease_until__lt=since, next_attempt_at__lt=since)
    ).count()
    return NotificationsLate(waiting > 0, waiting, limit)


def worker_heartbeat_ages(now: datetime | None = None) -> dict[str, float | None]:
    """None: it never ran."""
    now = now or timezone.now()
    ages: dict[str, float | None] = dict.fromkeys(WORKER_ROLES)
    for role, last in WorkerHeartbeat.objects.values_list("role").annotate(last=Max("beat_at")):
        ages[role] = max(0.0, (now - last).total_seconds())
    return ages


def worker_heartbeat_age(role: str, now: datetime | None = None) -> float | None:
    age = worker_heartbeat_ages(now)[role]
    return None if age is None else round(age, 1)


def sending_paused() -> bool:
    return bool(delivery.sending_paused()[0])


def report(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    beat = heartbeat(now)
    active = Training.objects.filter(finished_at__isnull=True)
    return {
        "database": True,
        "last_check_started_at": beat.last_run.started_at.isoformat() if beat.last_run else None,
        "last_check_age_seconds": round(beat.age_seconds, 1)
        if beat.age_seconds is not None
        else None,
        "check_late": beat.late,
        "check_late_after_seconds": beat.late_after_seconds,
        "active_trainings": active.count(),
        "stuck_trainings": active.filter(stuck_since__isnull=False).count(),
        "notifications_paused": sending_paused(),
        "notifications_late": notifications_late(now).late,
        "notifications_late_after_seconds": notifications_late_after_seconds(),
        "notifications_heartbeat_age_seconds": worker_heartbeat_age("notifications", now),
    }


def may_see_figures(request: HttpRequest) -> bool:
    token = settings.HEALTHZ_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer":
        return hmac.compare_digest(given.strip().encode(), token.encode())
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


@never_cache
@require_http_methods(["GET", "HEAD"])
def healthz(request: HttpRequest) -> JsonResponse:
    strict = request.GET.get("strict", "").lower() in {"1", "true", "yes"}
    try:
        body = report()
    except DatabaseError as exc:
        # The class name only: a connection error can carry the DSN.
        logger.error("healthz: database unreachable (%s)", type(exc).__name__)
        return JsonResponse(
            {"ok": False, "database": False, "error": "database unreachable"}, status=503
        )
    ok = not (strict and (body["check_late"] or body["notifications_late"]))
    if not may_see_figures(request):
        body = {name: value for name, value in body.items() if name in PUBLIC_FIELDS}
    return JsonResponse({"ok": ok, **body}, status=200 if ok else 503)
