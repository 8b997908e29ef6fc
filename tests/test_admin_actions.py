"""Each avatar admin action through the real path: the Django test client, PostgreSQL,
the engine's services and the fal emulator over loopback HTTPS."""

from __future__ import annotations

import pytest
from django.urls import reverse

from fakes.fal_emulator import FOREVER
from monitoring import transitions
from monitoring.models import AvatarEvent, AvatarStatus, EventKind, EventSource, Training
from notifications.models import Notification
from tests.support import queued_monitoring_tasks, run_queued_monitoring_tasks

CHANGELIST = reverse("admin:monitoring_avatar_changelist")


def act(client, action: str, avatars, **extra):
    """Submit an action from the changelist, as the action bar does."""
    data = {"action": action, "_selected_action": [a.pk for a in avatars], "index": 0, **extra}
    return client.post(CHANGELIST, data, follow=True)


def confirm(client, action: str, avatars, **fields):
    """Submit the confirmation page of an action."""
    data = {
        "action": action,
        "_selected_action": [a.pk for a in avatars],
        "confirmed": "yes",
        **fields,
    }
    return client.post(CHANGELIST, data, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def running(fal, started):
    """An avatar whose job waits in the emulator's queue until the test finishes it."""

    def start(**fields):
        fal.drop_webhooks()
        fal.script(queue_seconds=FOREVER, queue_position=2)
        return started(**fields)

    return start


def test_recheck_now_queues_the_check_and_the_worker_completes_a_finished_job(
    admin_client, fal, running
):
    avatar, training = running(name="Finished on fal")
    transitions.flag_stuck(training, reason="in queue too long")
    fal.finish(training.fal_request_id)
    calls_before = fal.status_calls[training.fal_request_id]

    response = act(admin_client, "recheck_now", [avatar])

    # Nothing was asked of fal inside the request: the check is queued for the worker.
    assert fal.status_calls[training.fal_request_id] == calls_before
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert any("re-check queued" in m for m in messages_of(response))
    requested = AvatarEvent.objects.get(training=training, kind=EventKind.RECHECK_REQUESTED)
    assert requested.actor.username == "admin" and requested.source == EventSource.STAFF
    [package] = queued_monitoring_tasks()
    assert package.task["func"] == "monitoring.tasks.recheck"
    assert package.task["args"][0] == [training.pk]

    [reports] = run_queued_monitoring_tasks()

    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert training.lora_url.startswith("https://")
    assert reports[0]["changed"] is True
    assert Notification.objects.filter(training=training, kind="ready").count() == 1


def test_recheck_now_says_which_avatars_had_nothing_to_check(admin_client, make_avatar):
    idle = make_avatar(name="Never started")

    response = act(admin_client, "recheck_now", [idle])

    assert any("no active training" in m and f"#{idle.pk}" in m for m in messages_of(response))
    assert queued_monitoring_tasks() == []


def test_start_training_asks_first_then_submits_once(admin_client, fal, make_avatar):
    avatar = make_avatar(name="New one")

    ask = act(admin_client, "start_training", [avatar])
    assert "paid training" in ask.content.decode()
    assert fal.submissions == []

    response = confirm(admin_client, "start_training", [avatar])

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert len(fal.submissions) == 1
    request_id = avatar.current_training.fal_request_id
    assert any(f"training started, fal request {request_id}" in m for m in messages_of(response))

    again = confirm(admin_client, "start_training", [avatar])
    assert len(fal.submissions) == 1
    assert any("left alone: it is Training" in m for m in messages_of(again))


def test_retrain_starts_a_new_attempt_for_a_failed_avatar_only(
    admin_client, fal, running, make_avatar
):
    failed, training = running(name="Failed once")
    transitions.fail(training, error_message="bad photos", source=EventSource.CHECK)
    fal.script(queue_seconds=FOREVER)
    ready = make_avatar(name="Not failed")

    response = confirm(admin_client, "retrain", [failed, ready])

    failed.refresh_from_db()
    assert failed.status == AvatarStatus.TRAINING
    assert failed.current_training.attempt == 2
    assert failed.current_training.fal_request_id != training.fal_request_id
    messages = messages_of(response)
    assert any(f"#{failed.pk}" in m and "training started" in m for m in messages)
    assert any(f"#{ready.pk}" in m and "only failed or cancelled avatars" in m for m in messages)
    ready.refresh_from_db()
    assert ready.status == AvatarStatus.READY_FOR_TRAINING


def test_a_cancelled_avatar_is_offered_retrain_and_starts_a_new_attempt(admin_client, fal, running):
    cancelled, training = running(name="Cancelled once")
    transitions.cancel(training, source=EventSource.STAFF)
    fal.script(queue_seconds=FOREVER)
    page = admin_client.get(
        reverse("admin:monitoring_avatar_change", args=[cancelled.pk])
    ).content.decode()
    assert "Retrain…" in page

    response = confirm(admin_client, "retrain", [cancelled])

    cancelled.refresh_from_db()
    assert cancelled.status == AvatarStatus.TRAINING
    assert cancelled.current_training.attempt == 2
    assert any("training started" in m for m in messages_of(response))


def test_cancel_on_fal_asks_first_then_asks_fal_to_cancel(admin_client, fal, running):
    avatar, training = running()

    ask = act(admin_client, "cancel_on_fal", [avatar])
    assert "Yes, I’m sure" in ask.content.decode()
    assert fal.cancel_calls[training.fal_request_id] == 0

    response = confirm(admin_client, "cancel_on_fal", [avatar])

    training.refresh_from_db()
    assert fal.cancel_calls[training.fal_request_id] == 1
    assert training.cancel_requested_at is not None
    assert any("Cancellation requested" in m for m in messages_of(response))


def test_mark_failed_records_the_reason_tells_the_owner_and_cancels_the_running_job(
    admin_client, fal, running
):
    avatar, training = running()

    ask = act(admin_client, "mark_failed", [avatar])
    assert 'name="reason"' in ask.content.decode()
    assert 'name="owner_message"' in ask.content.decode()

    response = confirm(
        admin_client,
        "mark_failed",
        [avatar],
        reason="photos show two people",
        owner_message="photos",
    )

    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    assert training.error_message == "photos show two people"
    assert fal.cancel_calls[training.fal_request_id] == 1
    assert Notification.objects.filter(training=training, kind="failed").count() == 1
    event = AvatarEvent.objects.get(training=training, kind=EventKind.STATUS, new_status="error")
    assert event.actor is not None and event.source == EventSource.STAFF
    assert training.staff_note == "photos show two people"
    assert training.owner_message == "photos"
    assert any(
        "marked failed" in m and "fal was asked to stop the job" in m for m in messages_of(response)
    )


def test_mark_failed_leaves_finished_avatars_alone(admin_client, running):
    avatar, training = running()
    transitions.complete(
        training, lora_url="https://v3.fal.media/a.safetensors", source=EventSource.CHECK
    )

    ask = act(admin_client, "mark_failed", [avatar])
    # Said before anything is typed: the completed avatar is not affected, and why.
    assert "nothing to confirm" in ask.content.decode()
    assert 'name="reason"' not in ask.content.decode()

    response = confirm(
        admin_client, "mark_failed", [avatar], reason="oops", owner_message="technical"
    )

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert any("no active training" in m for m in messages_of(response))


def test_resend_reopens_a_given_up_notification(admin_client, running, make_avatar):
    avatar, training = running()
    transitions.complete(
        training, lora_url="https://v3.fal.media/a.safetensors", source=EventSource.CHECK
    )
    notification = Notification.objects.get(training=training)
    Notification.objects.filter(pk=notification.pk).update(status="given_up", attempts=8)
    quiet = make_avatar(name="No messages")

    response = act(admin_client, "resend_notification", [avatar, quiet])

    notification.refresh_from_db()
    assert notification.status == "pending" and notification.attempts == 0
    messages = messages_of(response)
    assert any(
        f"#{avatar.pk}" in m and f"notification #{notification.pk} queued again" in m
        for m in messages
    )
    assert any(f"#{quiet.pk}" in m and "no undelivered notification" in m for m in messages)


def test_actions_need_a_staff_user(client, make_avatar):
    avatar = make_avatar()

    response = client.post(
        CHANGELIST, {"action": "recheck_now", "_selected_action": [avatar.pk], "index": 0}
    )

    assert response.status_code == 302 and "login" in response["Location"]
    assert queued_monitoring_tasks() == []
    assert Training.objects.count() == 0


def test_the_avatar_pages_buttons_post_the_admin_action_and_come_back_to_the_page(
    admin_client, fal, running
):
    avatar, training = running(name="From its page")
    page = reverse("admin:monitoring_avatar_change", args=[avatar.pk])
    button = {"_selected_action": avatar.pk, "from_avatar_page": "1"}

    # Re-check from the page: fal is asked in this request, its answer shown on the page.
    checked = admin_client.post(CHANGELIST, {**button, "action": "recheck_now"})
    assert checked.status_code == 302 and checked["Location"] == page
    assert fal.status_calls[training.fal_request_id] >= 1
    assert queued_monitoring_tasks() == []

    # Cancel asks first; its page leads back to the avatar and confirms back to it.
    ask = admin_client.post(CHANGELIST, {**button, "action": "cancel_on_fal"}).content.decode()
    assert f'href="{page}" class="button cancel-link"' in ask
    assert 'name="from_avatar_page" value="1"' in ask
    done = admin_client.post(CHANGELIST, {**button, "action": "cancel_on_fal", "confirmed": "yes"})
    assert done.status_code == 302 and done["Location"] == page
    assert fal.cancel_calls[training.fal_request_id] == 1
