"""Self-healing trainings: fal's own failures are retried for the owner, deadlines act."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from monitoring import failure_kinds, tasks
from monitoring.api.models import EventCallback
from monitoring.failure_kinds import Blame
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    Training,
    TrainingOutcome,
)
from monitoring.ops import dashboard
from monitoring.trainings import cancel_training, start_training
from notifications.models import Notification, NotificationKind
from tests.api_support import BODY
from tests.support import run_queued_monitoring_tasks

FAL_DOWN = {
    "error": "Runner disconnected",
    "error_type": "runner_disconnected",
    "result_status": 503,
}


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.FAL_PLATFORM_TIMEOUT_SECONDS = 2.0


@pytest.fixture
def settle(django_capture_on_commit_callbacks):
    """Run what the worker runs (checks, and the retries they queue) until nothing moves."""

    def run(rounds: int = 6) -> None:
        for _ in range(rounds):
            with django_capture_on_commit_callbacks(execute=True):
                Training.objects.active().update(
                    next_check_at=timezone.now() - timedelta(seconds=1)
                )
                tasks.run_check()
            with django_capture_on_commit_callbacks(execute=True):
                run_queued_monitoring_tasks()

    return run


def started(fal, make_avatar, make_owner, **script) -> Avatar:
    fal.drop_webhooks()
    fal.script(**script)
    avatar = make_avatar(owner=make_owner(language="en"), name="Anna")
    assert start_training(avatar, source=EventSource.COMMAND).training
    return avatar


def owner_messages(avatar: Avatar) -> list[tuple[str, str]]:
    rows = Notification.objects.filter(avatar=avatar, audience="owner").order_by("pk")
    return list(rows.values_list("kind", "text"))


def test_a_runner_that_disconnects_once_is_retried_and_the_owner_only_hears_ready(
    fal, make_avatar, make_owner, settle
):
    avatar = started(fal, make_avatar, make_owner, fail_first=1, **FAL_DOWN)
    settle()

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert len(fal.submissions) == 2
    [(kind, _text)] = owner_messages(avatar)
    assert kind == NotificationKind.READY
    first, second = Training.objects.filter(avatar=avatar).order_by("attempt")
    assert first.outcome == TrainingOutcome.RETRIED and first.error_type == "runner_disconnected"
    assert second.outcome == TrainingOutcome.COMPLETED
    assert fal.submissions[0]["payload"] == fal.submissions[1]["payload"]
    retried = AvatarEvent.objects.get(avatar=avatar, kind=EventKind.RETRIED)
    assert retried.message == "retried automatically after fal's runner_disconnected"
    # The avatar never passed through error: no failed status event, no failed message.
    assert not AvatarEvent.objects.filter(avatar=avatar, new_status=AvatarStatus.ERROR).exists()


def test_three_failures_of_fals_end_in_one_technical_message_saying_not_charged(
    fal, make_avatar, make_owner, settle
):
    avatar = started(fal, make_avatar, make_owner, **FAL_DOWN)
    settle()

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    assert len(fal.submissions) == 3  # the first job and TRAINING_AUTO_RETRY_MAX (2) retries
    [(kind, text)] = owner_messages(avatar)
    assert kind == NotificationKind.FAILED
    assert "not charged" in text and "your photos are fine" in text
    assert AvatarEvent.objects.filter(avatar=avatar, kind=EventKind.RETRIED).count() == 2


def test_a_422_photo_problem_is_never_retried(fal, make_avatar, make_owner, settle):
    avatar = started(
        fal,
        make_avatar,
        make_owner,
        error="Could not extract faces",
        error_type="image_load_error",
        result_status=422,
    )
    settle()

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    assert len(fal.submissions) == 1
    [(kind, text)] = owner_messages(avatar)
    assert kind == NotificationKind.FAILED and "photos could not be processed" in text


def test_a_staff_cancel_is_never_retried(fal, make_avatar, make_owner, settle):
    # fal answers the cancel with its own kind of failure: still the staff's cancel.
    avatar = started(
        fal, make_avatar, make_owner, queue_seconds=FOREVER, cancel_error_type="runner_disconnected"
    )
    cancel_training(avatar.trainings.get(), source=EventSource.STAFF)
    settle()

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.CANCELLED
    assert len(fal.submissions) == 1
    [(kind, _text)] = owner_messages(avatar)
    assert kind == NotificationKind.CANCELLED


def test_a_job_that_never_starts_is_ended_by_the_start_deadline_and_retried(
    fal, make_avatar, make_owner, settle, settings
):
    settings.TRAINING_START_TIMEOUT_SECONDS = 30
    avatar = started(fal, make_avatar, make_owner, queue_seconds=FOREVER)
    [submission] = fal.submissions
    assert submission["headers"]["x-fal-request-timeout"] == "30"
    assert submission["headers"]["x-fal-request-start-timeout"] == "30"
    job = fal.jobs[avatar.trainings.get().fal_request_id]
    job.submitted_at -= 31  # fal's clock: the start deadline has passed
    fal.script(queue_seconds=0)  # the next job starts and completes

    settle()

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    first = avatar.trainings.order_by("attempt").first()
    assert first.outcome == TrainingOutcome.RETRIED and first.error_type == "request_timeout"
    assert [kind for kind, _ in owner_messages(avatar)] == [NotificationKind.READY]


def test_without_our_start_deadline_fals_request_timeout_is_not_retried():
    assert failure_kinds.blame(error_type="request_timeout", http_status=504) == Blame.UNKNOWN
    assert (
        failure_kinds.blame(error_type="request_timeout", http_status=504, start_deadline_sent=True)
        == Blame.FAL
    )


def running_past_its_limit(fal, make_avatar, make_owner, settle, settings):
    """A training fal says is running, started before its (1 minute) run limit."""
    settings.TRAINING_MAX_RUN_MINUTES_PORTRAIT = 1
    avatar = started(fal, make_avatar, make_owner, run_seconds=FOREVER)
    settle(rounds=1)  # fal says IN_PROGRESS
    training = avatar.trainings.get()
    Training.objects.filter(pk=training.pk).update(started_at=timezone.now() - timedelta(minutes=2))
    return avatar, training


def test_a_run_past_its_limit_is_cancelled_on_fal_and_retried(
    fal, make_avatar, make_owner, settle, settings
):
    avatar, training = running_past_its_limit(fal, make_avatar, make_owner, settle, settings)
    fal.script(run_seconds=0)  # the retry's job completes
    settle()

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert fal.cancel_calls[training.fal_request_id] == 1
    training.refresh_from_db()
    assert training.outcome == TrainingOutcome.RETRIED and training.error_type == "run_deadline"
    assert training.cancel_requested_at is None  # the deadline's cancel, not staff's
    assert [kind for kind, _ in owner_messages(avatar)] == [NotificationKind.READY]


def test_a_deadline_cancel_fal_refuses_stays_flagged_for_staff_in_their_language(
    fal, make_avatar, make_owner, settle, settings
):
    avatar, training = running_past_its_limit(fal, make_avatar, make_owner, settle, settings)
    fal.script(training.fal_request_id, cancel_error=500)
    settle(rounds=1)

    training.refresh_from_db()
    assert fal.cancel_calls[training.fal_request_id] == 1
    assert training.deadline_cancel_at is None and training.outcome == ""
    assert training.stuck_reason.startswith("run deadline passed")
    assert "fal did not confirm the cancel" in training.stuck_reason
    [alert] = Notification.objects.filter(training=training, kind=NotificationKind.STUCK)
    assert "fal не подтвердил отмену" in alert.text
    assert owner_messages(avatar) == []


def test_a_retry_is_called_back_to_the_bot_as_training_retried(
    fal, make_api_client, receiver, settle
):
    bot = make_api_client(callback_url=receiver.url)
    fal.drop_webhooks()
    fal.script(fail_first=1, **FAL_DOWN)
    answer = bot.post("/api/v1/trainings", BODY, key=uuid.uuid4().hex)
    assert answer.status_code == 201, answer.content
    settle()

    events = list(EventCallback.objects.order_by("pk").values_list("event_type", flat=True))
    assert events == ["training.retried", "avatar.completed"]
    retried = EventCallback.objects.get(event_type="training.retried")
    assert len(retried.payload["data"]["trainings"]) == 2


def test_many_retries_in_an_hour_alert_staff_once_per_episode(fal, make_avatar, make_owner, settle):
    fal.drop_webhooks()
    fal.script(fail_first=1, **FAL_DOWN)
    owner = make_owner(language="en")

    def one_more(number: int) -> None:
        avatar = make_avatar(
            owner=owner, name=f"A{number}", images_url=f"https://p.example/{number}.zip"
        )
        start_training(avatar, source=EventSource.COMMAND)
        settle(rounds=3)

    for number in range(3):
        one_more(number)
    # Judged at each retry: 3 retried of 3 ended is a high share, but not over 5 attempts.
    assert not Notification.objects.filter(kind=NotificationKind.RETRIES).exists()

    one_more(3)  # 4 retried of 7 ended when it was retried: over 0.2, over 5
    [alert] = Notification.objects.filter(kind=NotificationKind.RETRIES)
    assert "4 из 7" in alert.text and alert.audience == "staff"

    one_more(4)  # the same episode: no second alert within the hour
    assert Notification.objects.filter(kind=NotificationKind.RETRIES).count() == 1
    assert Training.objects.filter(outcome=TrainingOutcome.RETRIED).count() == 5
    assert dashboard.retries_last_day() == 5


def test_the_avatar_page_and_the_dashboard_show_the_retries(
    fal, make_avatar, make_owner, settle, admin_client
):
    started(fal, make_avatar, make_owner, fail_first=1, **FAL_DOWN)
    settle()

    avatar = Avatar.objects.get()
    avatar_page = admin_client.get(
        reverse("admin:monitoring_avatar_change", args=[avatar.pk])
    ).content.decode()
    # The timeline and the attempts list both say why there is a second attempt.
    assert avatar_page.count("retried automatically after fal&#x27;s runner_disconnected") >= 2

    page = admin_client.get(reverse("admin:monitoring_dashboard")).content.decode()
    card = page[page.index('id="retries"') :]
    assert "Automatic retries, last 24 hours" in card
    assert '<a class="num"' in card and ">1</a>" in card[:600]
