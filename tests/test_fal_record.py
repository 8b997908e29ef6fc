"""fal is the source of truth (issue 13): recovery from fal's record, end to end.

The real fal-client and our Platform API client talk to the fal emulator over HTTPS;
task functions are called directly.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from monitoring import tasks, transitions
from monitoring.fal import payloads, platform
from monitoring.models import (
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    FalStatus,
    Training,
    TrainingOutcome,
)
from monitoring.trainings import record_no_fal_job, start_training
from notifications.models import Notification, NotificationKind
from tests.fixtures_fal import submit_directly
from tests.support import owner_messages

pytestmark = pytest.mark.django_db

PORTRAIT = payloads.ENDPOINTS["portrait"]


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.FAL_PLATFORM_TIMEOUT_SECONDS = 2.0
    settings.FAL_NOT_FOUND_CONFIRM_COUNT = 1
    settings.FAL_NOT_FOUND_CONFIRM_MINUTES = 0


def run_check(*trainings: Training) -> None:
    Training.objects.filter(pk__in=[t.pk for t in trainings]).update(
        next_check_at=timezone.now() - timedelta(seconds=1)
    )
    tasks.run_check()


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def finished_while_down(fal, make_avatar):
    """Start an avatar whose job ends and is forgotten by the queue before any check."""

    def start(**script):
        fal.drop_webhooks()  # the worker and the webhook intake were down
        fal.script(queue_forgets_after=0, **script)
        avatar = make_avatar()
        training = start_training(avatar, source=EventSource.COMMAND).training
        assert training is not None and training.fal_request_id
        return avatar, training

    return start


# --- Recover instead of failing -------------------------------------------------------------


def test_a_result_the_queue_forgot_completes_the_avatar_from_fals_record(
    fal, finished_while_down, caplog
):
    avatar, training = finished_while_down()
    with caplog.at_level(logging.INFO, logger="monitoring"):
        run_check(training)

    avatar.refresh_from_db()
    training.refresh_from_db()
    assert fal.status_calls[training.fal_request_id] >= 1  # the queue was asked and said 404
    assert avatar.status == AvatarStatus.COMPLETED
    assert training.lora_url.endswith("pytorch_lora_weights.safetensors")
    assert training.config_url.endswith("config.json")
    assert owner_messages(avatar) == [NotificationKind.READY]
    event = AvatarEvent.objects.get(training=training, new_status=AvatarStatus.COMPLETED)
    assert event.source == EventSource.FAL_RECORD  # the timeline says who answered
    assert event.details["answered_by"] == "fal_record"
    assert f"🎉 Обучение завершено для аватара {avatar.pk}" in caplog.text

    run_check(training)  # nothing more happens on a later check
    assert owner_messages(avatar) == [NotificationKind.READY]


def test_a_result_fetch_answering_404_asks_fals_record_instead_of_failing(fal, make_avatar):
    fal.script(result_error=404)
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    run_check(training)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert owner_messages(avatar) == [NotificationKind.READY]


def test_a_failed_job_the_queue_forgot_ends_in_error_with_fals_reason(fal, finished_while_down):
    avatar, training = finished_while_down(
        error="Could not find faces in 7 of 12 images", error_type="face_detection_error"
    )
    run_check(training)
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    assert training.error_message == "Could not find faces in 7 of 12 images"
    assert training.error_type == "face_detection_error"
    assert owner_messages(avatar) == [NotificationKind.FAILED]


def test_a_failure_after_a_cancel_request_is_a_cancellation(fal, finished_while_down):
    avatar, training = finished_while_down(error="Request was cancelled by the user")
    transitions.request_cancel(training, source=EventSource.STAFF)
    run_check(training)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.CANCELLED
    assert owner_messages(avatar) == [NotificationKind.CANCELLED]


def test_a_finished_job_without_payload_is_flagged_for_staff_and_the_owner_told_nothing(
    fal, finished_while_down
):
    avatar, training = finished_while_down(record_payload=False)
    for _ in range(3):
        run_check(training)

    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert training.fal_status == FalStatus.COMPLETED
    assert training.stuck_reason.startswith("finished on fal, but its result is not available")
    assert owner_messages(avatar) == []
    alert = Notification.objects.get(training=training, kind=NotificationKind.STUCK)
    assert "результат" in alert.text and "result is not available" not in alert.text


def test_a_request_unknown_to_the_record_too_is_failed_by_the_404_rule(fal, make_avatar):
    fal.script(queue_seconds=FOREVER)
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    fal.script(training.fal_request_id, status_error=404)
    run_check(training)
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR and training.error_type == "not_found"
    assert fal.platform_calls  # only after fal's record was asked


@pytest.mark.parametrize("trouble", ["429", "503", "500", "404", "timeout"])
def test_platform_api_trouble_never_changes_an_avatar(fal, finished_while_down, settings, trouble):
    settings.FAL_PLATFORM_TIMEOUT_SECONDS = 0.3
    if trouble == "timeout":
        fal.platform_latency = 1.0
    else:
        fal.fail_platform(int(trouble))
    avatar, training = finished_while_down()
    for _ in range(3):
        run_check(training)
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert training.finished_at is None and training.outcome == ""
    assert owner_messages(avatar) == []
    assert len(fal.platform_calls) >= 3

    fal.fail_platform(None)  # fal's record is back: the avatar completes from it
    fal.platform_latency = 0.0
    run_check(training)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert owner_messages(avatar) == [NotificationKind.READY]


def test_the_platform_client_follows_pages_and_refuses_a_listing_past_its_cap(fal, settings):
    for _ in range(250):
        fal.add_record(PORTRAIT, json_input={"images_data_url": "https://x/a.zip"})
    now = timezone.now()
    with platform.PlatformClient() as client:
        items = list(client.list_requests(PORTRAIT, start=now - timedelta(hours=1), end=now))
        assert len(items) == 250 and len({i.request_id for i in items}) == 250
        assert client.calls == 3
    settings.FAL_PLATFORM_MAX_PAGES = 2
    with pytest.raises(platform.PlatformUnavailable, match="more than 2 pages"):
        with platform.PlatformClient() as client:
            list(client.list_requests(PORTRAIT, start=now - timedelta(hours=1), end=now))


# --- Lost submits ---------------------------------------------------------------------------


def test_a_lost_submit_is_found_in_fals_record_and_completes_with_one_message(fal, make_avatar):
    fal.drop_webhooks()
    fal.script(lose_submit_answer=True)
    avatar = make_avatar()
    outcome = start_training(avatar, source=EventSource.COMMAND)
    training = outcome.training
    assert outcome.changed and "submit outcome unknown, being looked up" in outcome.detail
    training.refresh_from_db()
    assert training.fal_request_id is None and training.submit_unknown_since is not None
    assert len(fal.jobs) == 1
    (job_id,) = fal.jobs

    run_check(training)

    avatar.refresh_from_db()
    training.refresh_from_db()
    assert training.fal_request_id == job_id
    assert avatar.status == AvatarStatus.COMPLETED
    assert owner_messages(avatar) == [NotificationKind.READY]
    assert len(fal.submissions) == 1 and len(fal.jobs) == 1  # never resubmitted
    submitted = AvatarEvent.objects.get(training=training, kind=EventKind.SUBMITTED)
    assert submitted.source == EventSource.FAL_RECORD


def test_a_double_submit_adopts_the_earliest_job_and_alerts_staff(fal, make_avatar):
    fal.drop_webhooks()
    fal.script(lose_submit_answer=True)
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    (first,) = fal.jobs
    fal.script(lose_submit_answer=False)
    time.sleep(0.01)
    second = submit_directly(fal, PORTRAIT, training.arguments)  # e.g. a client-side retry

    run_check(training)
    run_check(training)

    training.refresh_from_db()
    avatar.refresh_from_db()
    assert training.fal_request_id == first
    assert avatar.status == AvatarStatus.COMPLETED
    note = AvatarEvent.objects.get(training=training, kind=EventKind.NOTE, details__others=[second])
    assert second in note.message
    alerts = Notification.objects.filter(kind=NotificationKind.FAL_RECORD, training=training)
    assert alerts.count() == 1 and second in alerts.get().text
    assert owner_messages(avatar) == [NotificationKind.READY]


def test_a_submit_whose_process_died_is_looked_up_after_the_submitting_limit(
    fal, make_avatar, settings
):
    settings.STUCK_SUBMITTING_MINUTES = 5
    avatar = make_avatar()
    endpoint, arguments = payloads.training_input(
        avatar.training_type, images_url=avatar.images_url, trigger_word=avatar.trigger_word
    )
    training = transitions.begin_training(
        avatar, endpoint=endpoint, arguments=arguments, webhook_url="", source="command"
    ).training
    job = submit_directly(fal, endpoint, arguments)  # the POST left, then the process died

    run_check(training)  # too early: a live process may still be waiting for the answer
    training.refresh_from_db()
    assert training.fal_request_id is None and not fal.platform_calls

    Training.objects.filter(pk=training.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    run_check(training)
    training.refresh_from_db()
    avatar.refresh_from_db()
    assert training.fal_request_id == job
    assert avatar.status == AvatarStatus.COMPLETED


def test_a_record_item_without_input_is_never_taken_for_a_match(fal, make_avatar):
    fal.script(lose_submit_answer=True, record_payload=False)
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    run_check(training)
    training.refresh_from_db()
    assert training.fal_request_id is None and training.finished_at is None


def test_a_lost_submit_with_no_job_is_given_up_once_and_startable_only_after_an_operator(
    fal, make_avatar, settings
):
    settings.STUCK_SUBMITTING_MINUTES = 5
    fal.script(lose_submit_answer=True, queue_seconds=FOREVER)  # fal's record never lists it
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    operator = User.objects.create_user("operator", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="start_training"))
    operator = User.objects.get(pk=operator.pk)

    assert "Not yet" in record_no_fal_job(training, actor=operator, source=EventSource.STAFF)

    Training.objects.filter(pk=training.pk).update(created_at=timezone.now() - timedelta(hours=3))
    run_check(training)
    training.refresh_from_db()
    assert training.is_stuck and "looking for it in fal's record" in training.stuck_reason
    assert training.lost_submit_given_up_at is None

    Training.objects.filter(pk=training.pk).update(created_at=timezone.now() - timedelta(hours=25))
    for _ in range(3):
        run_check(training)
    training.refresh_from_db()
    avatar.refresh_from_db()
    assert training.lost_submit_given_up_at is not None
    assert "no matching job in fal's record after 24 h" in training.stuck_reason
    assert Notification.objects.filter(kind=NotificationKind.FAL_RECORD).count() == 1
    assert Notification.objects.filter(training=training, kind=NotificationKind.STUCK).count() == 1
    assert avatar.status == AvatarStatus.TRAINING and len(fal.submissions) == 1
    assert not start_training(avatar, source=EventSource.COMMAND).changed  # not startable
    assert len(fal.submissions) == 1

    support = User.objects.create_user("support", is_staff=True)
    with pytest.raises(PermissionDenied):
        record_no_fal_job(training, actor=support, source=EventSource.STAFF)

    answer = record_no_fal_job(training, actor=operator, source=EventSource.STAFF)
    assert "fal has no such job" in answer
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.READY_FOR_TRAINING
    assert training.outcome == TrainingOutcome.NO_FAL_JOB
    assert AvatarEvent.objects.filter(training=training, actor=operator).exists()
    assert owner_messages(avatar) == []

    fal.script(lose_submit_answer=False)
    assert start_training(avatar, source=EventSource.COMMAND).training.fal_request_id
    assert len(fal.submissions) == 2


def test_lost_submit_lookups_survive_platform_trouble(fal, make_avatar):
    fal.script(lose_submit_answer=True)
    fal.fail_platform(429)
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    for _ in range(2):
        run_check(training)
    training.refresh_from_db()
    assert training.fal_request_id is None and training.finished_at is None
    fal.fail_platform(None)
    run_check(training)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


def test_the_stuck_reason_of_a_lost_submit_does_not_change_at_every_check(fal, make_avatar):
    fal.script(lose_submit_answer=True, queue_seconds=FOREVER)
    training = start_training(make_avatar(), source=EventSource.COMMAND).training
    Training.objects.filter(pk=training.pk).update(created_at=timezone.now() - timedelta(hours=1))
    for _ in range(3):
        run_check(training)
    assert AvatarEvent.objects.filter(training=training, kind=EventKind.NOTE).count() == 1
    training.refresh_from_db()
    assert training.stuck_reason.startswith("submit outcome unknown")


# --- gateway_request_id ----------------------------------------------------------------------


def test_the_gateway_request_id_is_kept_from_the_submit_and_the_webhook(fal, make_avatar, client):
    fal.drop_webhooks()
    training = start_training(make_avatar(), source=EventSource.COMMAND).training
    training.refresh_from_db()
    assert training.gateway_request_id == training.fal_request_id  # the emulator's answer

    import json

    body = json.loads(fal.webhook_for(training.fal_request_id)[0])
    body["gateway_request_id"] = "runner-attempt-2"
    raw = json.dumps(body).encode()
    response = client.post(
        "/webhooks/fal/",
        data=raw,
        content_type="application/json",
        headers=fal.signer.headers(raw, training.fal_request_id),
    )
    assert response.status_code == 200
    training.refresh_from_db()
    assert training.gateway_request_id == "runner-attempt-2"
    assert training.outcome == TrainingOutcome.COMPLETED


def test_the_operator_records_no_fal_job_from_the_admin(fal, make_avatar, client):
    fal.script(lose_submit_answer=True, queue_seconds=FOREVER)
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    Training.objects.filter(pk=training.pk).update(created_at=timezone.now() - timedelta(hours=25))
    run_check(training)
    form = {"action": "record_no_fal_job", "_selected_action": [avatar.pk], "confirmed": "yes"}

    support = User.objects.create_user("support", is_staff=True)
    support.user_permissions.add(*Permission.objects.filter(codename__in=["view_avatar"]))
    client.force_login(support)
    # Not offered to Support, so Django does not run it (the list again, or 403).
    assert client.post("/admin/monitoring/avatar/", form).status_code in (200, 403)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING

    operator = User.objects.create_superuser("operator")
    client.force_login(operator)
    page = client.post("/admin/monitoring/avatar/", {**form, "confirmed": ""})
    assert page.status_code == 200 and "fal has no such job" in page.content.decode()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING  # nothing before the confirmation
    client.post("/admin/monitoring/avatar/", form)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.READY_FOR_TRAINING


def test_start_training_says_a_lost_submit_is_being_looked_up(fal, make_avatar):
    import io
    import json

    from django.core.management import call_command

    fal.script(lose_submit_answer=True, queue_seconds=FOREVER)
    avatar = make_avatar()
    out = io.StringIO()
    call_command("start_training", "--avatar", str(avatar.pk), stdout=out)
    assert "submit outcome unknown, being looked up" in out.getvalue()

    other = make_avatar()
    out = io.StringIO()
    call_command("start_training", "--avatar", str(other.pk), "--json", stdout=out)
    answer = json.loads(out.getvalue())
    assert answer == {"id": str(other.pk), "fal_request_id": "", "state": "submit_outcome_unknown"}


def test_a_batch_of_forgotten_results_asks_fals_record_within_its_budget(
    fal, finished_while_down, settings
):
    settings.CHECK_INTERVAL_SECONDS = 1  # the batch may spend 0.5 s on fal's record
    fal.platform_latency = 0.3
    trainings = [finished_while_down()[1] for _ in range(4)]
    run_check(*trainings)
    done = Training.objects.filter(pk__in=[t.pk for t in trainings], finished_at__isnull=False)
    assert 1 <= done.count() < 4  # the rest wait, none failed
    assert not Training.objects.filter(outcome="error").exists()
    for _ in range(4):
        run_check(*trainings)
    assert Training.objects.filter(outcome="completed").count() == 4
