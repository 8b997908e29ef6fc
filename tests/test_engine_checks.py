"""The periodic check, end to end: real task code, real fal-client, the fal emulator."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring import tasks
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    CheckRun,
    EventKind,
    EventSource,
    FalStatus,
    Training,
)
from monitoring.trainings import start_training
from notifications.models import Notification, NotificationKind
from tests.support import check_run as run_check
from tests.support import make_due

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.CHECK_CONCURRENCY = 16


def test_it_completes_a_training_whose_webhook_was_dropped(fal, started, caplog):
    fal.drop_webhooks()
    fal.script(queue_seconds=60)
    avatar, training = started()
    fal.finish(training.fal_request_id)
    make_due(training)
    # The emulator's webhook loop runs every 50 ms: let it lose the webhook first.
    deadline = time.monotonic() + 5
    while not fal.dropped_webhooks and time.monotonic() < deadline:
        time.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="monitoring"):
        run = run_check()

    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert training.lora_url.endswith("pytorch_lora_weights.safetensors")
    assert training.config_url.endswith("config.json")
    assert training.result["diffusers_lora_file"]["file_size"] > 0
    assert (run.due, run.checked, run.completed, run.errors) == (1, 1, 1, 0)
    assert f"🔍 Проверка статуса аватара {avatar.pk}" in caplog.text
    assert f"🎉 Обучение завершено для аватара {avatar.pk}" in caplog.text
    assert Notification.objects.filter(avatar=avatar, kind=NotificationKind.READY).count() == 1
    assert fal.dropped_webhooks  # the webhook really was lost


def test_it_ends_a_failed_fal_job_in_error_with_fals_message(fal, started):
    fal.script(error="Could not find faces in 7 of 12 images", error_type="face_detection_error")
    avatar, training = started()
    make_due(training)

    run = run_check()

    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    assert training.error_message == "Could not find faces in 7 of 12 images"
    assert training.error_type == "face_detection_error"
    assert training.lora_url == ""
    assert run.failed == 1
    assert fal.result_calls[training.fal_request_id] == 0  # no result() for a failed job
    assert Notification.objects.filter(avatar=avatar, kind=NotificationKind.FAILED).count() == 1


def test_it_fails_an_avatar_whose_result_fetch_is_refused(fal, started):
    fal.script(result_error=422)
    avatar, training = started()
    make_due(training)
    run_check()
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    assert training.error_message == "Output validation failed"
    assert training.lora_url == ""  # never made up


def test_it_retries_a_result_fetch_that_fails_transiently(fal, started):
    fal.script(result_error=500)
    avatar, training = started()
    make_due(training)
    run_check()
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert training.fal_status == FalStatus.COMPLETED and training.check_failures == 1

    fal.script(training.fal_request_id, result_error=None)
    make_due(training)
    run_check()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


def test_it_follows_queue_position_and_progress_without_an_event_per_check(fal, started):
    fal.script(queue_seconds=600, run_seconds=600, queue_position=7)
    avatar, training = started()
    make_due(training)
    run_check()
    training.refresh_from_db()
    assert (training.fal_status, training.queue_position) == (FalStatus.IN_QUEUE, 7)

    fal.script(training.fal_request_id, queue_position=2)
    make_due(training)
    run_check()
    training.refresh_from_db()
    assert training.queue_position == 2
    assert not AvatarEvent.objects.filter(training=training, kind=EventKind.FAL_STATUS).exists()

    fal.script(training.fal_request_id, queue_seconds=0)
    make_due(training)
    run_check()
    training.refresh_from_db()
    assert training.fal_status == FalStatus.IN_PROGRESS
    assert training.started_at is not None and training.queue_position is None
    assert AvatarEvent.objects.filter(training=training, kind=EventKind.FAL_STATUS).count() == 1
    assert training.last_check_ok_at is not None and training.check_failures == 0
    # The next check is one interval after the run's start, not "now".
    assert training.next_check_at > timezone.now() + timedelta(seconds=50)


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
def test_transient_fal_errors_never_fail_an_avatar(fal, started, settings, code):
    settings.FAL_CALL_TIMEOUT_SECONDS = 0.5  # 429/502 make fal-client retry: we bound it
    fal.script(queue_seconds=600)
    avatar, training = started()
    fal.script(training.fal_request_id, status_error=code)
    for _ in range(3):
        make_due(training)
        run = run_check()
        assert run.errors == 1
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert training.check_failures == 3
    assert training.last_check_error
    # No backoff for one training's bad answers: due again at the next interval.
    assert training.next_check_at <= timezone.now() + timedelta(seconds=60)

    fal.script(training.fal_request_id, status_error=None)
    fal.finish(training.fal_request_id)
    make_due(training)
    run_check()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


@pytest.mark.parametrize("code", [401, 403])
def test_auth_and_billing_errors_alert_staff_and_never_fail_an_avatar(fal, started, code):
    fal.script(queue_seconds=600)
    avatar, training = started()
    other_avatar, other = started()
    fal.script(training.fal_request_id, status_error=code)
    fal.script(other.fal_request_id, status_error=code)
    make_due(training, other)

    run = run_check()

    avatar.refresh_from_db()
    other_avatar.refresh_from_db()
    assert avatar.status == other_avatar.status == AvatarStatus.TRAINING
    assert run.errors == 2
    alerts = Notification.objects.filter(kind=NotificationKind.FAL_ACCOUNT)
    assert alerts.count() == 1  # one alert, not one per training
    assert f"fal ответил {code}" in alerts.get().text


def test_a_missing_fal_key_alerts_staff_and_fails_nothing(fal, started, settings):
    fal.script(queue_seconds=600)
    avatar, training = started()
    settings.FAL_KEY = ""
    make_due(training)
    run = run_check()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert run.errors == 1
    assert Notification.objects.filter(kind=NotificationKind.FAL_ACCOUNT).count() == 1


def test_a_checked_call_never_hangs_the_run(fal, started, settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 0.3
    fal.script(queue_seconds=600, latency=5)
    avatar, training = started()
    make_due(training)
    began = time.monotonic()
    run = run_check()
    assert time.monotonic() - began < 3
    assert run.errors == 1
    training.refresh_from_db()
    assert "no answer within" in training.last_check_error


def test_a_404_is_believed_only_after_repeating_over_minutes(fal, started, settings):
    settings.FAL_NOT_FOUND_CONFIRM_COUNT = 3
    settings.FAL_NOT_FOUND_CONFIRM_MINUTES = 5
    fal.script(queue_seconds=600)  # never finished: fal's record does not list it either
    avatar, training = started()
    fal.script(training.fal_request_id, status_error=404)
    for _ in range(4):
        make_due(training)
        run_check()
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING  # four 404s within a minute: not believed
    assert training.not_found_count == 4

    Training.objects.filter(pk=training.pk).update(
        not_found_since=timezone.now() - timedelta(minutes=6)
    )
    make_due(training)
    run_check()
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    assert training.error_type == "not_found"
    assert "fal does not know this request" in training.error_message


def test_a_404_streak_is_forgotten_when_fal_answers_again(fal, started, settings):
    settings.FAL_NOT_FOUND_CONFIRM_MINUTES = 0
    settings.FAL_NOT_FOUND_CONFIRM_COUNT = 3
    fal.script(queue_seconds=600)
    avatar, training = started()
    fal.script(training.fal_request_id, status_error=404, status_error_times=2)
    for _ in range(3):
        make_due(training)
        run_check()
    training.refresh_from_db()
    assert (training.not_found_count, training.not_found_since) == (0, None)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING


def test_a_training_past_its_limit_is_flagged_stuck_once_and_unflagged_when_it_completes(
    fal, started, settings
):
    settings.STUCK_IN_QUEUE_MINUTES = 10
    fal.script(queue_seconds=3600, queue_position=40)
    avatar, training = started()
    Training.objects.filter(pk=training.pk).update(
        submitted_at=timezone.now() - timedelta(minutes=11)
    )
    for _ in range(3):
        make_due(training)
        run_check()
    training.refresh_from_db()
    assert training.stuck_since is not None
    assert "queue" in training.stuck_reason
    assert AvatarEvent.objects.filter(training=training, kind=EventKind.STUCK).count() == 1
    assert Notification.objects.filter(training=training, kind=NotificationKind.STUCK).count() == 1

    fal.finish(training.fal_request_id)
    make_due(training)
    run_check()
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert training.stuck_since is None


def test_an_extended_deadline_keeps_the_stuck_flag_down(fal, started, settings):
    settings.STUCK_IN_QUEUE_MINUTES = 10
    fal.script(queue_seconds=3600)
    avatar, training = started()
    Training.objects.filter(pk=training.pk).update(
        submitted_at=timezone.now() - timedelta(minutes=11),
        stuck_deadline_extended_until=timezone.now() + timedelta(hours=1),
    )
    make_due(training)
    run_check()
    training.refresh_from_db()
    assert training.stuck_since is None


def test_fal_failing_for_too_long_flags_stuck_but_never_fails(fal, started, settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 0.5
    settings.STUCK_FAL_UNREACHABLE_MINUTES = 15
    fal.script(queue_seconds=3600)
    avatar, training = started()
    Training.objects.filter(pk=training.pk).update(
        last_check_ok_at=timezone.now() - timedelta(minutes=20)
    )
    fal.script(training.fal_request_id, status_error=503)
    make_due(training)
    run_check()
    training.refresh_from_db()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert "no successful check" in training.stuck_reason


def test_a_check_of_many_running_trainings_costs_a_few_queries(fal, started):
    fal.script(queue_seconds=0, run_seconds=3600)
    trainings = [started()[1] for _ in range(12)]
    make_due(*trainings)
    run_check()  # the first check records IN_PROGRESS (an event each)
    make_due(*trainings)
    with CaptureQueriesContext(connection) as queries:
        run = run_check()
    assert run.checked == 12
    sql = [q["sql"] for q in queries.captured_queries]
    # Claim, take the lease over, load, the ETA's history (one per trainer and steps
    # setting), one bulk "checked OK" update, at most one bulk update of positions, logs
    # and estimates, hand the lease back: a constant per batch, not per training.
    assert len([q for q in sql if "monitoring_training" in q]) <= 7, sql
    assert not any("monitoring_avatarevent" in q for q in sql)
    assert len(sql) <= 3 * len(trainings)


def test_a_cancelled_job_becomes_cancelled_once_a_check_confirms_it(fal, started):
    from monitoring.trainings import cancel_training

    fal.script(queue_seconds=600)
    avatar, training = started()
    message = cancel_training(training, source=EventSource.STAFF)
    assert "Cancellation requested" in message
    training.refresh_from_db()
    assert training.cancel_requested_at is not None
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING  # not until fal confirms

    run_check()  # request_cancel made it due now
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.CANCELLED
    assert Notification.objects.filter(avatar=avatar, kind=NotificationKind.CANCELLED).count() == 1


def test_a_job_that_completes_despite_the_cancel_keeps_its_result(fal, started):
    from monitoring.trainings import cancel_training

    fal.script(queue_seconds=600, on_cancel="ignore")
    avatar, training = started()
    cancel_training(training, source=EventSource.STAFF)
    fal.finish(training.fal_request_id)
    run_check()
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert training.lora_url


def test_a_job_that_fal_forgets_after_the_cancel_is_cancelled(fal, started):
    from monitoring.trainings import cancel_training

    fal.script(queue_seconds=600, on_cancel="gone")
    avatar, training = started()
    cancel_training(training, source=EventSource.STAFF)
    run_check()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.CANCELLED


def test_cancelling_an_already_completed_job_completes_it_at_the_next_check(fal, started):
    from monitoring.trainings import cancel_training

    fal.drop_webhooks()
    fal.script(queue_seconds=600)
    avatar, training = started()
    fal.finish(training.fal_request_id)
    message = cancel_training(training, source=EventSource.STAFF)
    assert "already finished" in message
    run_check()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


def test_a_run_fans_out_over_the_broker_when_many_are_due(fal, started, settings):
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    settings.CHECK_BATCH_SIZE = 4
    fal.script(queue_seconds=0, run_seconds=3600)
    trainings = [started()[1] for _ in range(9)]
    OrmQ.objects.all().delete()
    make_due(*trainings)

    run = run_check()

    assert run.due == 9 and run.checked == 0 and "3 batches" in run.notes
    packages = [SignedPackage.loads(row.payload) for row in OrmQ.objects.all()]
    assert [p["func"] for p in packages] == ["monitoring.tasks.check_batch"] * 3
    # A worker runs each batch (here: directly, not through the scheduler).
    for package in packages:
        tasks.check_batch(*package["args"])
    run.refresh_from_db()
    assert run.checked == 9
    assert all(calls == 1 for calls in fal.status_calls.values())
    assert Training.objects.filter(fal_status=FalStatus.IN_PROGRESS).count() == 9


def test_a_staff_recheck_checks_trainings_that_are_not_due(fal, started):
    fal.drop_webhooks()
    avatar, training = started()
    fal.finish(training.fal_request_id)
    results = tasks.recheck([training.pk], actor_id=None)
    assert results[0]["after"] == "completed" and results[0]["changed"]
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert AvatarEvent.objects.filter(
        avatar=avatar, kind=EventKind.STATUS, source=EventSource.STAFF
    ).exists()


def test_a_dry_run_changes_nothing(fal, started):
    from monitoring.status_checks import check_trainings

    avatar, training = started()
    fal.finish(training.fal_request_id, error="boom", error_type="x")
    reports = check_trainings([training], source=EventSource.STAFF, dry_run=True)
    assert reports[0].after == "error" and "boom" in str(reports[0].summary)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING


@pytest.mark.django_db(transaction=True)
def test_two_workers_never_check_the_same_in_flight_training_twice_in_one_interval(fal, started):
    fal.script(queue_seconds=0, run_seconds=3600, latency=0.2)
    trainings = [started()[1] for _ in range(10)]
    make_due(*trainings)
    runs: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                runs.append(tasks.run_check())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert len(runs) == 6
    for training in trainings:
        assert fal.status_calls[training.fal_request_id] == 1, fal.status_calls
    assert sum(CheckRun.objects.filter(pk__in=runs).values_list("checked", flat=True)) == 10
    assert Avatar.objects.filter(status=AvatarStatus.TRAINING).count() == 10


def test_a_training_submitting_too_long_is_flagged_and_never_resubmitted(
    fal, make_avatar, settings
):
    settings.FAL_SUBMIT_TIMEOUT_SECONDS = 1.0
    settings.STUCK_SUBMITTING_MINUTES = 5
    fal.submit_latency = 2.0  # fal gets the job, the answer is too late
    fal.script(queue_seconds=600)  # still queued: fal's record does not list it yet
    avatar = make_avatar()
    outcome = start_training(avatar, source=EventSource.COMMAND)
    assert "submit outcome unknown, being looked up" in outcome.detail
    training = outcome.training
    training.refresh_from_db()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert training.fal_status == FalStatus.SUBMITTING and training.fal_request_id is None

    Training.objects.filter(pk=training.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    for _ in range(2):
        make_due(training)
        run_check()
    training.refresh_from_db()
    assert "submit outcome unknown" in training.stuck_reason
    assert len(fal.submissions) == 1
    assert Notification.objects.filter(training=training, kind=NotificationKind.STUCK).count() == 1


def test_a_run_ends_inside_its_interval_and_leaves_the_rest_due(fal, started, settings):
    settings.CHECK_INTERVAL_SECONDS = 2  # a batch may spend 1.5 s asking fal
    settings.CHECK_CONCURRENCY = 2
    settings.FAL_CALL_TIMEOUT_SECONDS = 5
    fal.script(queue_seconds=0, run_seconds=3600, latency=0.6)
    trainings = [started()[1] for _ in range(8)]
    make_due(*trainings)

    began = time.monotonic()
    run = run_check()

    assert time.monotonic() - began < 2.5
    assert 2 <= run.checked < 8  # two at a time, 0.6 s each, within 1.5 s
    skipped = Training.objects.filter(
        pk__in=[t.pk for t in trainings], last_checked_at__isnull=True
    )
    assert skipped.count() == 8 - run.checked
    # What was not asked is due at the next run, not an interval later.
    assert all(t.next_check_at <= timezone.now() for t in skipped)


def test_cancelling_a_training_fal_never_answered_for_cancels_it_at_once(
    fal, make_avatar, settings
):
    from monitoring.trainings import cancel_training

    settings.FAL_SUBMIT_TIMEOUT_SECONDS = 1.0
    fal.submit_latency = 2.0
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.STAFF).training
    message = cancel_training(training, source=EventSource.STAFF)
    assert "never returned a request id" in message
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.CANCELLED
    assert not fal.cancel_calls  # nothing on fal to address


def test_a_cancel_refused_by_fal_changes_nothing_and_alerts_staff(fal, started):
    from monitoring.trainings import cancel_training

    fal.script(queue_seconds=600)
    avatar, training = started()
    fal.expected_key = "another-id:another-secret"
    message = cancel_training(training, source=EventSource.STAFF)
    assert "401" in message
    training.refresh_from_db()
    avatar.refresh_from_db()
    assert training.cancel_requested_at is None and avatar.status == AvatarStatus.TRAINING
    assert Notification.objects.filter(kind=NotificationKind.FAL_ACCOUNT).count() == 1
