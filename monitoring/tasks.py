"""django-q2 task functions of the monitoring engine.

Tests and staff tools call these directly or enqueue them with
``django_q.tasks.async_task("monitoring.tasks.<name>", ...)``; nothing here waits on
another task.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth import get_user_model

from monitoring import reconcile, status_checks
from monitoring import trainings as training_service
from monitoring.fal import platform
from monitoring.models import CheckRun, EventSource, Training


def run_check(kind: str = CheckRun.Kind.SCHEDULED) -> int:
    """The periodic check (the schedule and startup restore enqueue it); returns the run id."""
    return status_checks.run_periodic_check(kind=kind).pk


def send_attempt(training_id: int) -> str:
    """Send an automatic retry now (queued when fal's failure was applied)."""
    training = Training.objects.select_related("avatar").filter(pk=training_id).first()
    if training is None:
        return "no such training"
    return training_service.send(training, source=EventSource.SYSTEM).detail or "sent"


def cancel_for_deadline(training_id: int) -> str:
    """Cancel on fal a run past its limit (the periodic check found it)."""
    training = Training.objects.active().select_related("avatar").filter(pk=training_id).first()
    if training is None:
        return "already finished"
    return training_service.cancel_for_deadline(training)


def check_batch(training_ids: list[int], run_id: int | None, run_start: str) -> int:
    """One fanned-out batch of a run; returns how many trainings it checked."""
    reports = status_checks.check_batch(training_ids, run_id, datetime.fromisoformat(run_start))
    return sum(report.checked for report in reports)


def recheck(
    training_ids: list[int], source: str = EventSource.STAFF, actor_id: int | None = None
) -> list[dict]:
    """Check these trainings now, due or not (staff "re-check now").

    Who asked (``actor_id``) is kept in the task's result next to what each check saw.
    """
    trainings = list(Training.objects.filter(pk__in=training_ids, finished_at__isnull=True))
    # Staff asked: fal's answer goes on each timeline, changed or not.
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id else None
    reports = training_service.recheck(trainings, source=source, actor=actor)
    return [
        {
            "training_id": r.training_id,
            "avatar_id": r.avatar_id,
            "before": r.before,
            "after": r.after,
            "changed": r.changed,
            "summary": r.summary,
            "error": r.error,
            "actor_id": actor_id,
        }
        for r in reports
    ]


def reconcile_fal() -> dict:
    """The daily audit of fal's record (monitoring.reconcile); returns its counts."""
    import logging

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
