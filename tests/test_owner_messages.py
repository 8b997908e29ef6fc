"""What the owner is told, from what fal returned: one test per failure shape we know.

The shapes come from ``shared/fal-facts.md`` and the fal emulator: a COMPLETED status
with ``error``/``error_type``, a result fetch answering 422 with a ``detail`` list or
5xx with ``error_type``, a webhook ``ERROR`` with ``payload.detail`` or a null payload,
a cancelled job, and our own codes. The end-to-end tests go through the real path:
fal-client against the emulator, the periodic check, signed webhooks, the outbox.
"""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from fakes.fal_emulator import FOREVER
from monitoring import owner_messages, transitions
from monitoring.fal import signing_keys
from monitoring.models import AvatarEvent, AvatarStatus, EventKind, EventSource, Training
from monitoring.owner_messages import owner_message_for
from monitoring.status_checks import check_trainings
from monitoring.trainings import cancel_training, start_training
from notifications.models import Notification, NotificationKind, NotificationStatus, OwnerMessage

pytestmark = pytest.mark.django_db

PHOTOS_EN = "the uploaded photos could not be processed"
TECHNICAL_EN = "the training service had a problem"
UNKNOWN_EN = "an error happened during training"


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0


# --- the table, shape by shape -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # Status COMPLETED with the trainer's error_type (the emulator's demo failure).
        ({"error_type": "image_load_error"}, OwnerMessage.PHOTOS),
        ({"error_type": "face_error"}, OwnerMessage.PHOTOS),
        ({"error_type": "file_download_error"}, OwnerMessage.PHOTOS),
        # The emulator's cancelled job, and fal's own request error for it.
        ({"error_type": "request_cancelled"}, OwnerMessage.CANCELLED),
        ({"error_type": "client_cancelled"}, OwnerMessage.CANCELLED),
        # Result fetch: 422 with a detail list (validation of the owner's input).
        ({"http_status": 422, "detail_type_list": ["value_error"]}, OwnerMessage.PHOTOS),
        ({"http_status": 422, "detail_type_list": ["image_too_small"]}, OwnerMessage.PHOTOS),
        # ...but a constraint on our own input (steps) is ours, not the owner's.
        ({"http_status": 422, "detail_type_list": ["greater_than"]}, OwnerMessage.TECHNICAL),
        # Both: the owner can act on the photos.
        (
            {"http_status": 422, "detail_type_list": ["greater_than", "image_load_error"]},
            OwnerMessage.PHOTOS,
        ),
        # 422 without types we know is still fal rejecting the input.
        ({"http_status": 422, "error_type": "http_422"}, OwnerMessage.PHOTOS),
        # Result fetch: 5xx with a request error_type, or without one.
        ({"http_status": 503, "error_type": "runner_disconnected"}, OwnerMessage.TECHNICAL),
        ({"http_status": 504, "error_type": "request_timeout"}, OwnerMessage.TECHNICAL),
        ({"http_status": 500}, OwnerMessage.TECHNICAL),
        # Our own codes: fal lost the request, or finished without a LoRA.
        ({"error_type": "not_found"}, OwnerMessage.TECHNICAL),
        ({"error_type": "no_lora_in_result"}, OwnerMessage.TECHNICAL),
        # A COMPLETED error without a type, a webhook ERROR with a null payload.
        ({"error_type": "fal_error"}, OwnerMessage.UNKNOWN),
        ({}, OwnerMessage.UNKNOWN),
    ],
)
def test_each_fal_failure_shape_maps_to_one_owner_message(fields, expected):
    assert owner_message_for(**fields) == expected


@pytest.mark.parametrize(
    "error_type",
    [
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
        "internal_error",
    ],
)
def test_every_fal_request_error_is_a_technical_problem(error_type):
    assert owner_message_for(error_type=error_type) == OwnerMessage.TECHNICAL


def test_words_in_free_text_never_decide(make_avatar, make_owner):
    avatar = make_avatar(owner=make_owner(language="en"))
    training = Training.objects.create(avatar=avatar, endpoint="fal-ai/x")
    avatar.current_training = training
    avatar.status = AvatarStatus.TRAINING
    avatar.save()
    # The old word matcher read "photo" and "422" here and blamed the photos.
    transitions.fail(
        training,
        error_message="owner asked us to stop; photo 422 validation zip",
        error_type="",
        source=EventSource.STAFF,
    )
    notification = Notification.objects.get(training=training)
    assert PHOTOS_EN not in notification.text.lower()
    assert UNKNOWN_EN in notification.text.lower()


def test_detail_types_reads_only_the_type_of_each_entry():
    payload = {"detail": [{"msg": "bad photo", "type": "image_too_small"}, {"msg": "x"}, "junk"]}
    assert owner_messages.detail_types(payload) == ["image_too_small"]
    assert owner_messages.detail_types({"detail": "a string"}) == []
    assert owner_messages.detail_types(None) == []


# --- through the real path ------------------------------------------------------------------


def _start(make_avatar, **avatar_fields):
    avatar = make_avatar(**avatar_fields)
    outcome = start_training(avatar, source=EventSource.COMMAND)
    assert outcome.training is not None and outcome.training.fal_request_id, outcome
    return avatar, outcome.training


def _check(training: Training) -> None:
    check_trainings([Training.objects.get(pk=training.pk)], source=EventSource.CHECK)


def test_the_poll_sees_fals_image_error_and_tells_the_owner_about_photos(fal, make_avatar, owner):
    owner.language = "en"
    owner.save()
    fal.script(
        queue_seconds=0,
        run_seconds=0,
        error="Could not extract enough faces",
        error_type="image_load_error",
    )
    avatar, training = _start(make_avatar, owner=owner)
    _check(training)

    training.refresh_from_db()
    assert training.owner_message == OwnerMessage.PHOTOS
    notification = Notification.objects.get(training=training)
    assert notification.kind == NotificationKind.FAILED
    assert PHOTOS_EN in notification.text.lower()
    assert notification.context["owner_message"] == "photos"


def test_a_refused_result_fetch_with_a_422_detail_list_is_about_photos(fal, make_avatar, owner):
    owner.language = "en"
    owner.save()
    # The status shows no error, the result answers 422 with a detail list.
    fal.script(queue_seconds=0, run_seconds=0, result_error=422)
    avatar, training = _start(make_avatar, owner=owner)
    _check(training)

    training.refresh_from_db()
    assert training.outcome == "error"
    assert training.owner_message == OwnerMessage.PHOTOS
    event = AvatarEvent.objects.get(training=training, kind=EventKind.STATUS, new_status="error")
    assert event.details["http_status"] == 422
    assert event.details["detail_types"] == ["value_error"]


@pytest.mark.parametrize("on_cancel", ["error", "gone"])
def test_cancel_on_a_queued_training_ends_cancelled_with_the_cancelled_message(
    fal, make_avatar, owner, on_cancel
):
    owner.language = "en"
    owner.save()
    fal.script(queue_seconds=FOREVER, on_cancel=on_cancel)
    avatar, training = _start(make_avatar, owner=owner)

    text = cancel_training(training, source=EventSource.STAFF)
    assert "Cancellation requested" in text
    _check(training)

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.CANCELLED
    [notification] = Notification.objects.filter(training=training)
    assert notification.kind == NotificationKind.CANCELLED
    assert "was cancelled" in notification.text
    if on_cancel == "error":
        # fal's answer stays on the timeline for staff.
        event = AvatarEvent.objects.get(
            training=training, kind=EventKind.STATUS, new_status="cancelled"
        )
        assert event.message == "Request was cancelled by the user"
        assert event.details["cancel_requested"] is True


def test_cancel_on_a_running_training_is_cancelled_when_the_webhook_reports_the_failure(
    fal, make_avatar, client, settings
):
    fal.deliver_webhooks = False
    signing_keys.forget()
    fal.script(queue_seconds=0, run_seconds=FOREVER)
    avatar, training = _start(make_avatar)
    _check(training)  # IN_PROGRESS now
    cancel_training(training, source=EventSource.STAFF)

    body, headers = fal.webhook_for(training.fal_request_id)
    assert json.loads(body)["status"] == "ERROR"
    response = client.post(
        reverse("fal-webhook"),
        data=body,
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code == 200, response.content

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.CANCELLED
    assert Notification.objects.get(training=training).kind == NotificationKind.CANCELLED
    signing_keys.forget()


def test_staff_choosing_no_message_records_a_skipped_notification_once(make_avatar):
    avatar = make_avatar()
    training = Training.objects.create(avatar=avatar, endpoint="fal-ai/x")
    avatar.current_training = training
    avatar.status = AvatarStatus.TRAINING
    avatar.save()

    outcome = transitions.fail(
        training,
        error_message="duplicate order",
        error_type="staff",
        owner_message=OwnerMessage.NONE,
        staff_note="duplicate order",
        source=EventSource.STAFF,
    )
    assert outcome.changed
    again = transitions.fail(
        training, error_message="again", owner_message=OwnerMessage.PHOTOS, source="staff"
    )
    assert not again.changed

    [notification] = Notification.objects.filter(training=training)
    assert notification.status == NotificationStatus.SKIPPED
    assert notification.context["skipped"] == "staff_chose_no_message"
