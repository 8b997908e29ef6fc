"""django-q2 task functions of the monitoring engine (``monitoring.tasks.<name>``);
nothing here waits on another task."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from monitoring import billing, reconcile, status_checks, wording
from monitoring import trainings as training_service
from monitoring.fal import platform
from monitoring.models import CheckRun, EventSource, FalAccount, Training


def run_check(kind: str = CheckRun.Kind.SCHEDULED) -> int:
    return status_checks.run_periodic_check(kind=kind).pk


def send_attempt(training_id: int) -> str:
    training = Training.objects.select_related("avatar").filter(pk=training_id).first()
    if training is None:
        return "no such training"
    return training_service.send(training, source=EventSource.SYSTEM).detail or "sent"


def look_up_costs() -> dict:
    return dataclasses.asdict(billing.look_up_costs())


def check_balance() -> dict:
    """fal's balance (monitoring.billing), read when due; an interval under a minute (tests,
    demos) reads every FAL_BALANCE_CHECK_SECONDS within the scheduled minute."""
    interval = settings.FAL_BALANCE_CHECK_SECONDS
    started = time.monotonic()
    readings = released = 0
    last = billing.BalanceReading()
    while True:
        attempt = FalAccount.objects.filter(pk=1).values_list("last_attempt_at", flat=True).first()
        now = timezone.now()
        if attempt is None or now - attempt >= timedelta(seconds=interval - 1):
            last = billing.read_balance(now=now)
            readings += 1
            if last.balance is not None and not last.hold:
                released += training_service.release_held()
        if interval >= 60 or time.monotonic() - started + interval > 45:
            break
        time.sleep(interval)
    return {
        "readings": readings,
        "balance": str(last.balance) if last.balance is not None else None,
        "error": last.error,
        "hold": last.hold,
        "released": released,
    }


release_held = training_service.release_held  # the rest of a release, oldest first


def cancel_for_deadline(training_id: int) -> str:
    training = Training.objects.active().select_related("avatar").filter(pk=training_id).first()
    if training is None:
        return "already finished"
    return training_service.cancel_for_deadline(training)


def check_batch(training_ids: list[int], run_id: int | None, run_start: str) -> int:
    reports = status_checks.check_batch(training_ids, run_id, datetime.fromisoformat(run_start))
    return sum(report.checked for report in reports)


def recheck(
    training_ids: list[int], source: str = EventSource.STAFF, actor_id: int | None = None
) -> list[dict]:
    """Staff's "re-check now", due or not; the result keeps ``actor_id`` with each check."""
    trainings = list(Training.objects.filter(pk__in=training_ids, finished_at__isnull=True))
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id else None
    reports = training_service.recheck(trainings, source=source, actor=actor)
    return [
        {
            "training_id": r.training_id,
            "avatar_id": r.avatar_id,
            "before": r.before,
            "after": r.after,
            "changed": r.changed,
            "summary": wording.english(str, r.summary),
            "error": r.error,
            "actor_id": actor_id,
        }
        for r in reports
    ]


def reconcile_fal() -> dict:
    try:
        report = reconcile.reconcile_fal(source=EventSource.SYSTEM)
    except platform.PlatformUnavailable as exc:
        # Tomorrow's run covers the same window again; nothing was decided on a gap.
        logging.getLogger("monitoring").warning("fal reconcile skipped: %s", exc)
        return {"error": str(exc)}
    return {
        "checked": report.checked,
        "unknown_to_us": len(report.unknown_to_us),
        "finished_now": len(report.finished_now),
    }
