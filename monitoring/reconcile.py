"""Audit what fal billed: requests nobody follows, trainings fal finished that we show active.
See docs/architecture.md#fals-own-record-recovery-lost-submits-adoption.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from html import escape
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone

from monitoring import billing, status_checks
from monitoring.fal import payloads, platform
from monitoring.models import EventSource, Training, UnknownFalRequest
from notifications import outbox

logger = logging.getLogger("monitoring")

ALERT_LINES = 30  # one Telegram message; the admin list has them all


@dataclass
class ReconcileReport:
    checked: int = 0
    unknown_to_us: list[dict[str, Any]] = field(default_factory=list)
    finished_now: list[dict[str, Any]] = field(default_factory=list)
    platform_calls: int = 0

    def as_json(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if name != "platform_calls"}


def reconcile_fal(
    *, since_hours: float | None = None, dry_run: bool = False, source: str = EventSource.SYSTEM
) -> ReconcileReport:
    """Raises ``platform.PlatformUnavailable`` when fal's record cannot be read in full:
    a partial listing would report nothing unknown for what it did not see."""
    hours = settings.FAL_RECONCILE_HOURS if since_hours is None else since_hours
    now = timezone.now()
    report = ReconcileReport()
    stale: dict[int, platform.RecordItem] = {}
    with platform.PlatformClient() as client:
        try:
            for endpoint in sorted(set(payloads.ENDPOINTS.values())):
                items = iter(
                    client.list_requests(
                        endpoint, start=now - timedelta(hours=hours), end=now + timedelta(minutes=1)
                    )
                )
                while page := list(itertools.islice(items, platform.PAGE_SIZE)):
                    _compare(page, report, stale)
        finally:
            report.platform_calls = client.calls
    _cost_unknown(report.unknown_to_us, start=now - timedelta(hours=hours), end=now)
    if not dry_run:
        _keep_unknown(report.unknown_to_us, now)
        _alert_unknown(report.unknown_to_us)
    report.finished_now = _finish_stale(stale, dry_run=dry_run, source=source)
    logger.info(
        "fal reconcile over %s h: %s requests in fal's record, %s unknown to us, %s finished now%s",
        hours,
        report.checked,
        len(report.unknown_to_us),
        len(report.finished_now),
        " (dry run)" if dry_run else "",
    )
    return report


def _compare(
    page: list[platform.RecordItem], report: ReconcileReport, stale: dict[int, platform.RecordItem]
) -> None:
    report.checked += len(page)
    known = {
        request_id: (pk, finished_at)
        for pk, request_id, finished_at in Training.objects.filter(
            fal_request_id__in=[item.request_id for item in page]
        ).values_list("pk", "fal_request_id", "finished_at")
    }
    for item in page:
        if item.request_id not in known:
            report.unknown_to_us.append(item.summary())
            continue
        pk, finished_at = known[item.request_id]
        if finished_at is None:
            stale[pk] = item


def _cost_unknown(unknown: list[dict[str, Any]], *, start, end) -> None:
    """What fal billed for each request nobody follows (``cost_usd``: None when unknown)."""
    if not unknown:
        return
    try:
        costs = billing.costs_of(
            [entry["request_id"] for entry in unknown],
            start=start - timedelta(hours=1),
            end=end + timedelta(minutes=1),
        )
    except platform.PlatformUnavailable as exc:
        logger.warning("fal reconcile: the costs of unknown requests not read: %s", exc)
        costs = {}
    for entry in unknown:
        entry["cost_nano_usd"] = costs.get(entry["request_id"])
        entry["cost_usd"] = billing.usd_text(entry["cost_nano_usd"])


def _keep_unknown(unknown: list[dict[str, Any]], now) -> None:
    """The admin's list: new requests added, known ones seen again, adopted ones linked."""
    latest = {entry["request_id"]: entry for entry in unknown}  # a listing may repeat one
    for costed in (True, False):
        rows = [
            UnknownFalRequest(
                request_id=entry["request_id"],
                endpoint_id=entry["endpoint_id"],
                ended_at=entry["ended_at"],
                status_code=entry["status_code"],
                cost_nano_usd=entry["cost_nano_usd"],
                first_seen_at=now,
                last_seen_at=now,
            )
            for entry in latest.values()
            if (entry["cost_nano_usd"] is not None) is costed
        ]
        UnknownFalRequest.objects.bulk_create(
            rows,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["request_id"],
            update_fields=["last_seen_at", "cost_nano_usd"] if costed else ["last_seen_at"],
        )
    # Requests adopted since they were listed (by any path) point at their training.
    adopted = Training.objects.filter(fal_request_id=OuterRef("request_id"))
    UnknownFalRequest.objects.filter(adopted_training__isnull=True).filter(Exists(adopted)).update(
        adopted_training=Subquery(adopted.values("pk"))
    )


def _alert_unknown(unknown: list[dict[str, Any]]) -> None:
    if not unknown:
        return
    ids = sorted(entry["request_id"] for entry in unknown)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]
    lines = [
        f"• <code>{escape(entry['request_id'])}</code> {escape(entry['endpoint_id'])} "
        f"(HTTP {entry['status_code']}, {escape(str(entry['ended_at'] or '?'))[:19]}"
        + (f", ${entry['cost_usd']}" if entry.get("cost_usd") else "")
        + ")"
        for entry in unknown[:ALERT_LINES]
    ]
    more = len(unknown) - ALERT_LINES
    text = (
        f"🧾 fal выставил счёт за {len(unknown)} задач, которые мы не отслеживаем:\n"
        + "\n".join(lines)
        + (f"\n… и ещё {more}" if more > 0 else "")
        + "\nАдмин: «fal requests unknown to us» → «Adopt»."
    )
    outbox.queue_fal_record_alert(
        dedup_key=f"unknown_requests:{digest}", text=text, context={"count": len(unknown)}
    )


def _finish_stale(
    stale: dict[int, platform.RecordItem], *, dry_run: bool, source: str
) -> list[dict[str, Any]]:
    """Trainings fal finished that we still show active: the normal path ends them."""
    trainings = list(Training.objects.filter(pk__in=list(stale), finished_at__isnull=True))
    if dry_run:
        return [
            {
                "request_id": t.fal_request_id,
                "avatar_id": t.avatar_id,
                "status": "completed" if stale[t.pk].succeeded else "error",
            }
            for t in trainings
        ]
    status_checks.check_trainings(trainings, source=source)
    finished = Training.objects.filter(pk__in=[t.pk for t in trainings], finished_at__isnull=False)
    return [
        {"request_id": t.fal_request_id, "avatar_id": t.avatar_id, "status": t.outcome}
        for t in finished
    ]
