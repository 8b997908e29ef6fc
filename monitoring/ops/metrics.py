"""``GET /metrics``: what the dashboard knows, in Prometheus' text format, read from the
database at scrape time (any web process answers the same).
See docs/operations.md#metrics-errors-logs-deployment-files.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from itertools import accumulate

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Min, Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from avatarsite.client_address import client_address
from monitoring import billing, totals
from monitoring.fal import client as fal
from monitoring.fal import payloads
from monitoring.models import (
    AvatarStatus,
    CheckRun,
    EventSource,
    FalAccount,
    FalStatus,
    Training,
    WebhookOutcome,
    WebhookVerdict,
)
from monitoring.ops import dashboard, health
from notifications.models import (
    IN_FLIGHT,
    Notification,
    NotificationAttempt,
    NotificationKind,
    NotificationStatus,
)

logger = logging.getLogger("monitoring")

PREFIX = "avatar_monitor"
# Series that exist from the first scrape with 0, so that rate() sees their first
# increase (a series that appears at 1 has no increase to show).
FAL_ERROR_CLASSES = (fal.FalTransient.__name__, fal.FalAuthError.__name__, fal.FalNotFound.__name__)


def _counter(
    name: str,
    documentation: str,
    label_names: list[str],
    found: dict[tuple[tuple[str, str], ...], int],
    known: Sequence[tuple[str, ...]],
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=label_names)
    values = {tuple(sorted(zip(label_names, labels, strict=True))): 0 for labels in known} | found
    for key in sorted(values):
        family.add_metric([dict(key).get(n, "") for n in label_names], values[key])
    return family


FINISH_SOURCES = (EventSource.WEBHOOK, EventSource.CHECK, EventSource.FAL_RECORD)
FINISH_OUTCOMES = (AvatarStatus.COMPLETED, AvatarStatus.ERROR, AvatarStatus.CANCELLED)
OWNER_TOLD_KINDS = (NotificationKind.READY, NotificationKind.FAILED, NotificationKind.CANCELLED)
OTHER_TRAINER = "other"


def _trainer(endpoint: str) -> str:
    return endpoint if endpoint in payloads.ENDPOINTS.values() else OTHER_TRAINER


def _histogram(
    histogram: totals.Histogram,
    documentation: str,
    label: str,
    reading: totals.Reading,
    known: Sequence[str],
    bound: Callable[[str], str] = str,
) -> HistogramMetricFamily:
    """``bound`` maps a stored label value onto the exposed one (keeps the label set bounded)."""
    counts: dict[str, Counter[str]] = {value: Counter() for value in known}
    sums_ms: Counter[str] = Counter()
    bucket_sums = reading.sums_ms.get(histogram.bucket_total, {})
    for key, number in reading.values.get(histogram.bucket_total, {}).items():
        labels = dict(key)
        value = bound(labels.get(label, ""))
        counts.setdefault(value, Counter())[labels["le"]] += number
        sums_ms[value] += bucket_sums.get(key, 0)
    family = HistogramMetricFamily(f"{PREFIX}_{histogram.name}", documentation, labels=[label])
    bounds = [totals.bound_text(b) for b in histogram.buckets] + ["+Inf"]
    for value in sorted(counts):
        cumulative = list(zip(bounds, accumulate(counts[value][le] for le in bounds), strict=True))
        family.add_metric([value], cumulative, sum_value=sums_ms[value] / 1000)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


# Gauges other apps export, registered in their AppConfig.ready(): each gets ``now``.
EXTRA_FIGURES: list[Callable[[datetime], Iterator[Metric]]] = []


def thresholds() -> Iterator[Metric]:
    """The alert thresholds that are settings: the rules compare against these."""
    yield _gauge(
        "check_run_late_after_seconds",
        "The periodic check is late when its last run started longer ago than this.",
        health.late_after_seconds(),
    )
    yield _gauge(
        "notifications_late_after_seconds",
        "Notifications are late when a message has been due and untaken longer than this.",
        health.notifications_late_after_seconds(),
    )
    yield _gauge(
        "worker_heartbeat_late_after_seconds",
        "A worker role is down when its heartbeat is older than this "
        "(WORKER_HEARTBEAT_LATE_SECONDS).",
        settings.WORKER_HEARTBEAT_LATE_SECONDS,
    )
    yield _gauge(
        "owner_told_objective_seconds",
        "Objective for the owner-told p95 (OWNER_TOLD_OBJECTIVE_SECONDS).",
        settings.OWNER_TOLD_OBJECTIVE_SECONDS,
    )
    yield _gauge(
        "trainings_stuck_threshold",
        "Alert when more trainings than this are stuck (STUCK_TRAININGS_ALERT_THRESHOLD).",
        settings.STUCK_TRAININGS_ALERT_THRESHOLD,
    )
    yield _gauge(
        "fal_error_ratio_threshold",
        "fal is failing for everyone from this share of failed status calls "
        "(FAL_OUTAGE_ERROR_SHARE).",
        settings.FAL_OUTAGE_ERROR_SHARE,
    )
    yield _gauge(
        "webhook_refusals_per_minute_threshold",
        "Alert when refused webhook deliveries per minute exceed this "
        "(WEBHOOK_REFUSALS_ALERT_PER_MINUTE).",
        settings.WEBHOOK_REFUSALS_ALERT_PER_MINUTE,
    )


class DatabaseCollector:
    """Reads every figure from the database when Prometheus scrapes: 8 queries."""

    def collect(self, now: datetime | None = None) -> Iterator[Metric]:
        now = now or timezone.now()

        active = GaugeMetricFamily(
            f"{PREFIX}_trainings_active",
            "Trainings in progress (not finished), by fal sub-state.",
            labels=["fal_status"],
        )
        rows = {
            row["fal_status"]: row
            for row in Training.objects.filter(finished_at__isnull=True)
            .values("fal_status")
            .annotate(n=Count("id"), stuck=Count("id", filter=Q(stuck_since__isnull=False)))
            .order_by()
        }
        for status in FalStatus.values:
            active.add_metric([status], rows[status]["n"] if status in rows else 0)
        yield active
        stuck = sum(row["stuck"] for row in rows.values())
        yield _gauge("trainings_stuck", "Active trainings flagged stuck.", stuck)
        avatars = GaugeMetricFamily(f"{PREFIX}_avatars", "Avatars by status.", labels=["status"])
        for status, _label, n in dashboard.status_counts():
            avatars.add_metric([status], n)
        yield avatars
        beat = health.heartbeat(now)
        yield _gauge(
            "check_run_age_seconds",
            "Seconds since the worker's last periodic check run started (+Inf: never ran).",
            beat.age_seconds if beat.age_seconds is not None else math.inf,
        )
        last_duration, checked, errors = (
            CheckRun.objects.filter(kind__in=health.WORKER_RUN_KINDS, finished_at__isnull=False)
            .order_by("-started_at")
            .values_list("duration_seconds", "checked", "errors")
            .first()
        ) or (None, 0, 0)
        yield _gauge(
            "check_run_duration_seconds",
            "Duration of the worker's last finished periodic check run (NaN: none yet).",
            last_duration if last_duration is not None else math.nan,
        )
        yield _gauge(
            "fal_error_ratio",
            "Share of the fal status calls of the last finished periodic run that failed "
            "(0: none made).",
            errors / checked if checked else 0.0,
        )
        backlog = Notification.objects.filter(
            status__in=(NotificationStatus.PENDING, NotificationStatus.SENDING)
        ).aggregate(
            n=Count("id"),
            oldest_due=Min(
                "next_attempt_at", filter=Q(pk__in=Notification.objects.due().values("pk"))
            ),
        )
        yield _gauge(
            "notifications_backlog",
            "Notifications not sent yet (pending or being sent).",
            backlog["n"],
        )
        oldest = backlog["oldest_due"]
        yield _gauge(
            "notifications_oldest_due_seconds",
            "Seconds the oldest due notification has been waiting for a worker (0: none due).",
            max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )
        yield _gauge(
            "notifications_paused",
            "1 while notification sending is paused because Telegram rejects the bot token.",
            1 if health.sending_paused() else 0,
        )
        for extra in EXTRA_FIGURES:
            yield from extra(now)
        beats = GaugeMetricFamily(
            f"{PREFIX}_worker_heartbeat_age_seconds",
            "Seconds since a worker role last beat on any host (+Inf: never ran).",
            labels=["role"],
        )
        for role, age in sorted(health.worker_heartbeat_ages(now).items()):
            beats.add_metric([role], age if age is not None else math.inf)
        yield beats
        # Counters and histograms: the running totals, never pruned.
        reading = totals.read()
        found = reading.values
        yield _counter(
            "fal_errors",
            "fal answers to status checks that were errors, by exception class.",
            ["class"],
            found.get("fal_errors", {}),
            [(c,) for c in FAL_ERROR_CLASSES],
        )
        yield _counter(
            "webhook_deliveries",
            "fal webhook deliveries received, by signature verdict and outcome.",
            ["verdict", "outcome"],
            found.get("webhook_deliveries", {}),
            [(WebhookVerdict.VALID, o) for o in WebhookOutcome if o != WebhookOutcome.RECEIVED]
            + [(v, WebhookOutcome.REJECTED) for v in WebhookVerdict if v != WebhookVerdict.VALID],
        )
        yield _counter(
            "notification_sends",
            "Telegram answers to notification sends, by result.",
            ["result"],
            found.get("notification_sends", {}),
            [(o,) for o in NotificationAttempt.Outcome if o != IN_FLIGHT],
        )
        yield _counter(
            "finishes",
            "Trainings finished, by how we learned it (webhook, check, fal_record, ...) "
            "and outcome.",
            ["learned_by", "outcome"],
            found.get("finishes", {}),
            [(s, o) for s in FINISH_SOURCES for o in FINISH_OUTCOMES],
        )
        yield _histogram(
            totals.OWNER_TOLD,
            "Seconds from fal's completion of a training to its owner's message sent, by kind.",
            "kind",
            reading,
            OWNER_TOLD_KINDS,
        )
        trainers = sorted(set(payloads.ENDPOINTS.values()))
        for histogram, documentation in (
            (totals.TIME_TO_READY, "Seconds from the start of a training to the avatar ready"),
            (totals.FAL_QUEUE, "Seconds a training waited in fal's queue before running"),
        ):
            yield _histogram(
                histogram, f"{documentation}, by trainer.", "trainer", reading, trainers, _trainer
            )
        spend = CounterMetricFamily(
            f"{PREFIX}_fal_spend_usd",
            "What fal billed for our trainings, in USD, by endpoint (from billing events).",
            labels=["endpoint"],
        )
        billed = {
            dict(key).get("endpoint", ""): n
            for key, n in found.get(billing.SPEND_TOTAL, {}).items()
        }
        for endpoint in sorted(set(trainers) | set(billed)):
            spend.add_metric([endpoint], billed.get(endpoint, 0) / billing.NANO)
        yield spend
        balance = FalAccount.objects.filter(pk=1).values_list("balance_usd", flat=True).first()
        yield _gauge(
            "fal_balance_usd",
            "fal's credit balance in USD as last read (NaN: never read).",
            float(balance) if balance is not None else math.nan,
        )
        yield from thresholds()


# Only our collector: process metrics (memory, GC) would differ between processes.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(DatabaseCollector())


def _refusal(request: HttpRequest) -> HttpResponse | None:
    token, networks = settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS
    if not token and not networks:
        raise Http404("metrics are not enabled")
    if networks:
        address = client_address(request)
        if address is None or not any(
            ipaddress.ip_address(address) in network for network in networks
        ):
            return JsonResponse({"error": "this address may not read the metrics"}, status=403)
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            response = JsonResponse(
                {"error": "a valid bearer token is required (Authorization: Bearer …)"}, status=401
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return None


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if (refusal := _refusal(request)) is not None:
        return refusal
    try:
        body = generate_latest(REGISTRY)
    except DatabaseError as exc:
        logger.error("metrics: database unreachable (%s)", type(exc).__name__)
        return JsonResponse({"error": "database unreachable"}, status=503)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
