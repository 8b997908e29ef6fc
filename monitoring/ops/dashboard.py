"""What the staff dashboard (``monitoring.admin.dashboard``) shows, in a handful of queries.

The chart is plain SVG built here on the server: no JavaScript, no CDN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.translation import gettext as _
from django_stubs_ext import StrOrPromise

from monitoring import billing, eta
from monitoring.models import (
    Avatar,
    AvatarStatus,
    CheckRun,
    Training,
    TrainingOutcome,
    TrainingType,
)
from monitoring.ops import health
from notifications import reachability
from notifications.models import Notification


@dataclass
class HourBucket:
    start: datetime
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    durations: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.cancelled

    @property
    def average_minutes(self) -> float | None:
        return sum(self.durations) / len(self.durations) / 60 if self.durations else None


def status_counts() -> list[tuple[str, StrOrPromise, int]]:
    found = dict(Avatar.objects.values_list("status").annotate(n=Count("id")).order_by())
    return [(value, label, found.get(value, 0)) for value, label in AvatarStatus.choices]


def fal_error_rate(now: datetime) -> dict[str, Any]:
    """Share of status checks that fal answered with an error over the last hour."""
    totals = CheckRun.objects.filter(started_at__gte=now - timedelta(hours=1)).aggregate(
        checked=Sum("checked"), errors=Sum("errors"), runs=Count("id")
    )
    # A run's ``checked`` counts every training asked about, including those whose
    # status call failed (``errors``).
    checked, errors = totals["checked"] or 0, totals["errors"] or 0
    return {
        "runs": totals["runs"],
        "checked": checked,
        "errors": errors,
        "percent": round(100.0 * errors / checked, 1) if checked else None,
    }


def finished_per_hour(now: datetime, hours: int = 24) -> list[HourBucket]:
    first = (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
    buckets = {
        first + timedelta(hours=i): HourBucket(first + timedelta(hours=i)) for i in range(hours)
    }
    rows = (
        Training.objects.filter(finished_at__gte=first)
        .exclude(outcome=TrainingOutcome.REFUSED)
        .annotate(hour=TruncHour("finished_at"))
        .values_list("hour", "outcome", "finished_at", "submitted_at", "created_at")
    )
    for hour, outcome, finished, submitted, created in rows:
        bucket = buckets.get(hour)
        if bucket is None:
            continue
        if outcome == TrainingOutcome.COMPLETED:
            bucket.completed += 1
            assert finished is not None  # filtered on finished_at
            # Durations of successful trainings only: a failure after 5 s says
            # nothing about how long training takes.
            bucket.durations.append((finished - (submitted or created)).total_seconds())
        elif outcome == TrainingOutcome.ERROR:
            bucket.failed += 1
        else:
            bucket.cancelled += 1
    return list(buckets.values())


def notification_backlog(now: datetime) -> dict[str, Any]:
    backlog = Notification.objects.filter(status__in=("pending", "sending")).aggregate(
        n=Count("id"), oldest=Min("created_at")
    )
    oldest = backlog["oldest"]
    return {
        "pending": backlog["n"],
        "oldest_age_minutes": round((now - oldest).total_seconds() / 60, 1) if oldest else None,
        "problems": reachability.undelivered_count(),
        "paused": health.sending_paused(),
        "late": health.notifications_late(now),
        "heartbeat_age_seconds": health.worker_heartbeat_age("notifications", now),
    }


def _minutes(value: float) -> str:
    """ "0.7 min" / "0,7 мин": the number and the unit in the reader's language."""
    # Fast trainings take under a minute or two: "0" above a bar would say nothing.
    number = number_format(value, decimal_pos=1 if value < 10 else 0)
    return _("%(minutes)s min") % {"minutes": number}


def chart(buckets: list[HourBucket]) -> dict[str, Any]:
    """The shapes of templates/admin/monitoring/dashboard_chart.html, in SVG coordinates."""
    width, height, left, bottom, top = 760, 220, 36, 28, 26
    plot_h = height - bottom - top
    bar_w = (width - left) / max(len(buckets), 1)
    peak = max([b.total for b in buckets] + [1])
    colours = (("completed", "#2e7d32"), ("failed", "#c62828"), ("cancelled", "#757575"))
    bars, means, hours = [], [], []
    for i, bucket in enumerate(buckets):
        x = left + i * bar_w + 2
        y = height - bottom
        hour = bucket.start.strftime("%H:00")
        for name, colour in colours:
            value = getattr(bucket, name)
            if not value:
                continue
            h = plot_h * value / peak
            y -= h
            title = f"{hour} {_(name)}: {value}"
            bars.append(
                {"x": x, "y": y, "width": bar_w - 4, "height": h, "fill": colour, "title": title}
            )
        if bucket.average_minutes is not None:
            means.append(
                {"x": x + (bar_w - 4) / 2, "y": y - 3, "text": _minutes(bucket.average_minutes)}
            )
        if i % 3 == 0:
            hours.append({"x": x, "text": hour})
    return {
        "width": width,
        "height": height,
        "left": left,
        "base": height - bottom,
        "peak": peak,
        "peak_y": top + 8,
        "hour_y": height - 10,
        "bars": bars,
        "means": means,
        "hours": hours,
    }


def retries_last_day(now: datetime | None = None) -> int:
    since = (now or timezone.now()) - timedelta(hours=24)
    return Training.objects.filter(outcome=TrainingOutcome.RETRIED, finished_at__gte=since).count()


def money(now: datetime) -> dict[str, Any]:
    """Spend and fal's balance (``monitoring.billing``)."""
    account = billing.account_state()
    if not account["configured"]:
        return {"configured": False, "held": account["held"]}
    figures = billing.spend(now)

    def usd(nano: int) -> str:
        return billing.cents(billing.usd(nano))

    return {
        **account,
        "balance": billing.cents(account["balance_usd"])
        if account["balance_usd"] is not None
        else None,
        "today": usd(figures.today),
        "week": usd(figures.week),
        "month": usd(figures.month),
        "by_trainer": [(endpoint, usd(n)) for endpoint, n in figures.by_trainer],
        "top_owners": [
            {
                "owner_id": row["avatar__owner_id"],
                "name": f"@{row['avatar__owner__username']}"
                if row["avatar__owner__username"]
                else str(row["avatar__owner__telegram_id"]),
                "usd": usd(row["total"]),
                "trainings": row["trainings"],
            }
            for row in figures.top_owners
        ],
        "completed_avatars": figures.completed_avatars,
        "per_completed_avatar": None
        if figures.per_completed_avatar is None
        else usd(figures.per_completed_avatar),
    }


def gather(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    buckets = finished_per_hour(now)
    durations = [d for b in buckets for d in b.durations]
    stuck = Training.objects.filter(finished_at__isnull=True, stuck_since__isnull=False)
    return {
        "now": now,
        "status_counts": status_counts(),
        "active_count": Training.objects.filter(finished_at__isnull=True).count(),
        # The oldest few; the stuck list has them all.
        "stuck": list(stuck.select_related("avatar__owner").order_by("stuck_since")[:10]),
        "stuck_total": stuck.count(),
        "heartbeat": health.heartbeat(now),
        "fal_errors": fal_error_rate(now),
        "retries": retries_last_day(now),
        "hours": buckets,
        "finished_total": sum(b.total for b in buckets),
        "mean_duration_minutes": round(sum(durations) / len(durations) / 60, 1)
        if durations
        else None,
        "chart": chart(buckets),
        "notifications": notification_backlog(now),
        "money": money(now),
        "eta_times": eta_times(),
    }


def eta_times() -> list[dict[str, Any]]:
    labels = dict(TrainingType.choices)
    return [
        {
            **row,
            "label": labels.get(row["trainer"], row["trainer"]),
            "queue_minutes": None if row["queue_p50"] is None else round(row["queue_p50"] / 60, 1),
            "run_minutes": None if row["run_p50"] is None else round(row["run_p50"] / 60, 1),
        }
        for row in eta.p50_by_trainer()
    ]
