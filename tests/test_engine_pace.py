"""Checks keep their minute: no per-training backoff, fal-wide outages, restore cadence, stuck."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from monitoring import status_checks, stuck, wording
from monitoring.models import (
    AvatarEvent,
    AvatarStatus,
    CheckRun,
    FalStatus,
    Training,
)
from monitoring.ops.schedules import PERIODIC_CHECK
from notifications.models import Notification, NotificationKind
from tests.support import check_run as run_check
from tests.support import make_due

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 1.0
    settings.CHECK_CONCURRENCY = 16


def test_a_training_whose_first_three_status_calls_fail_is_finished_at_the_fourth_check(
    fal, started, settings
):
    settings.CHECK_INTERVAL_SECONDS = 1
    avatar, training = started()
    fal.script(training.fal_request_id, status_error=500, status_error_times=3)
    began = time.monotonic()

    # The scheduler: a run every interval, counted from the start.
    finished_at_run = None
    for run_number in range(1, 7):
        time.sleep(max(0.0, began + run_number * 1.0 - time.monotonic()))
        run_check()
        avatar.refresh_from_db()
        if avatar.status == AvatarStatus.COMPLETED:
            finished_at_run = run_number
            break
    elapsed = time.monotonic() - began

    assert finished_at_run == 4, fal.status_calls[training.fal_request_id]
    assert 3.5 <= elapsed < 5.0  # about four intervals after it started
    errors = list(CheckRun.objects.order_by("started_at").values_list("errors", flat=True))
    assert errors[-4:] == [1, 1, 1, 0]  # one check per interval, none skipped


def test_a_fal_wide_outage_changes_no_avatar_tells_staff_once_and_checks_a_sample(
    fal, started, settings
):
    settings.FAL_OUTAGE_MIN_CALLS = 4
    settings.FAL_OUTAGE_ERROR_SHARE = 0.5
    fal.script(queue_seconds=3600)
    pairs = [started(name=f"Аутедж {i}") for i in range(6)]
    for _avatar, training in pairs:
        fal.script(training.fal_request_id, status_error=503)
    events_before = AvatarEvent.objects.count()

    runs = []
    for _interval in range(3):  # every call failing for three intervals
        make_due()
        runs.append(run_check())

    assert [(r.due, r.errors) for r in runs] == [(6, 6), (4, 4), (4, 4)]
    assert runs[0].fal_outage_since is not None
    assert {r.fal_outage_since for r in runs} == {runs[0].fal_outage_since}
    alerts = Notification.objects.filter(kind=NotificationKind.FAL_OUTAGE)
    assert alerts.count() == 1
    assert "3" not in alerts.get().dedup_key.split(":")[0]
    for avatar, training in pairs:
        avatar.refresh_from_db()
        training.refresh_from_db()
        assert avatar.status == AvatarStatus.TRAINING
        assert training.finished_at is None and training.stuck_since is None
    assert AvatarEvent.objects.count() == events_before

    # fal answers again: the sampled run succeeds and ends the episode...
    for _avatar, training in pairs:
        fal.script(training.fal_request_id, status_error=None)
    make_due()
    recovered = run_check()
    assert (recovered.due, recovered.errors, recovered.fal_outage_since) == (4, 0, None)
    # ...and the next run checks everything again.
    make_due()
    normal = run_check()
    assert (normal.due, normal.checked, normal.errors) == (6, 6, 0)
    assert Notification.objects.filter(kind=NotificationKind.FAL_OUTAGE).count() == 1


def test_a_few_failing_calls_are_not_an_outage(fal, started, settings):
    settings.FAL_OUTAGE_MIN_CALLS = 20
    fal.script(queue_seconds=3600)
    pairs = [started() for _ in range(3)]
    for _avatar, training in pairs:
        fal.script(training.fal_request_id, status_error=500)
    make_due()
    run = run_check()
    assert run.errors == 3 and run.fal_outage_since is None
    assert not Notification.objects.filter(kind=NotificationKind.FAL_OUTAGE).exists()
    make_due()
    assert run_check().due == 3  # no sampling


def test_a_restore_then_the_scheduled_run_checks_every_active_training(fal, started, settings):
    settings.CHECK_INTERVAL_SECONDS = 20  # the claim's grace is 2 s
    fal.script(queue_seconds=3600)
    trainings = [started()[1] for _ in range(5)]
    # The scheduler's next tick is 3 s away when the worker restarts.
    next_run = timezone.now() + timedelta(seconds=3)
    Schedule.objects.update_or_create(
        name=PERIODIC_CHECK,
        defaults={"func": "monitoring.tasks.run_check", "schedule_type": "I", "minutes": 1},
    )
    Schedule.objects.filter(name=PERIODIC_CHECK).update(next_run=next_run)

    assert status_checks.restore_monitoring(enqueue=False) == 5
    restored = run_check(CheckRun.Kind.RESTORE)
    assert restored.checked == 5

    time.sleep(max(0.0, (next_run - timezone.now()).total_seconds()))
    scheduled = run_check()

    assert (scheduled.due, scheduled.checked) == (5, 5)
    for training in trainings:
        training.refresh_from_db()
        assert training.next_check_at >= scheduled.started_at + timedelta(seconds=19)


def test_no_stuck_reason_is_measured_from_a_status_the_failed_checks_could_not_confirm(
    fal, started, settings
):
    avatar, training = started()
    long_ago = timezone.now() - timedelta(minutes=settings.STUCK_IN_PROGRESS_MINUTES_PORTRAIT + 30)
    Training.objects.filter(pk=training.pk).update(
        fal_status=FalStatus.IN_PROGRESS,
        started_at=long_ago,
        last_check_ok_at=timezone.now() - timedelta(minutes=1),
    )
    fal.script(training.fal_request_id, status_error=500)
    make_due(training)

    run_check()

    training.refresh_from_db()
    assert training.check_failures == 1
    assert training.stuck_since is None
    assert stuck.stuck_cause(training, timezone.now()) is None
    # Once fal confirms it is still running, the limit applies.
    training.check_failures = 0
    cause = stuck.stuck_cause(training, timezone.now())
    assert "training on fal for" in wording.english(wording.cause_words, cause, timezone.now())
