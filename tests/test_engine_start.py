"""Starting a training: one submit, stored at once, refusals leave the avatar startable."""

from __future__ import annotations

import logging
import threading

import pytest
from django.db import connection

from monitoring.models import (
    Avatar,
    AvatarStatus,
    EventSource,
    FalStatus,
    Training,
    TrainingOutcome,
    TrainingType,
)
from monitoring.trainings import start_training
from notifications.models import Notification, NotificationKind

pytestmark = pytest.mark.django_db


def test_it_submits_a_portrait_with_trigger_phrase_and_stores_the_request_at_once(
    fal, make_avatar, caplog
):
    avatar = make_avatar(trigger_word="ohwx man", training_settings={"steps": 1000})
    with caplog.at_level(logging.INFO, logger="monitoring"):
        outcome = start_training(avatar, source=EventSource.COMMAND)

    assert outcome.changed
    [submission] = fal.submissions
    assert submission["endpoint"] == "fal-ai/flux-lora-portrait-trainer"
    assert submission["payload"] == {
        "images_data_url": "https://example.com/photos.zip",
        "trigger_phrase": "ohwx man",
        "steps": 1000,
    }
    assert submission["webhook_url"] == "http://testserver/webhooks/fal/"
    training = Training.objects.get(avatar=avatar)
    assert training.fal_request_id in fal.jobs
    assert training.status_url.endswith(f"/requests/{training.fal_request_id}/status")
    assert training.cancel_url.endswith("/cancel") and training.response_url
    assert training.fal_status == FalStatus.IN_QUEUE and training.next_check_at
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert f"✅ Мониторинг запущен для аватара {avatar.pk}" in caplog.text


def test_it_submits_a_style_with_trigger_word_and_is_style(fal, make_avatar):
    avatar = make_avatar(training_type=TrainingType.STYLE, trigger_word="mystyle")
    start_training(avatar, source=EventSource.COMMAND)
    [submission] = fal.submissions
    assert submission["endpoint"] == "fal-ai/flux-lora-fast-training"
    assert submission["payload"]["trigger_word"] == "mystyle"
    assert submission["payload"]["is_style"] is True
    assert "trigger_phrase" not in submission["payload"]


def test_two_quick_starts_of_one_avatar_submit_once(fal, make_avatar):
    avatar = make_avatar()
    first = start_training(avatar, source=EventSource.STAFF)
    second = start_training(Avatar.objects.get(pk=avatar.pk), source=EventSource.STAFF)
    assert first.changed and not second.changed
    assert second.detail == "already training"
    assert len(fal.submissions) == 1
    assert Training.objects.filter(avatar=avatar).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_starts_of_one_avatar_submit_once(fal, make_avatar):
    fal.submit_latency = 0.3  # the first submit is in flight while the second click comes
    avatar = make_avatar()
    barrier = threading.Barrier(2)
    outcomes = []

    def click() -> None:
        try:
            barrier.wait()
            outcomes.append(
                start_training(Avatar.objects.get(pk=avatar.pk), source=EventSource.STAFF)
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(o.changed for o in outcomes) == [False, True]
    assert len(fal.submissions) == 1
    assert Training.objects.filter(avatar=avatar).count() == 1


def test_a_refused_submit_leaves_the_avatar_startable_with_the_reason(fal, make_avatar):
    fal.refuse_next_submit(422)
    avatar = make_avatar()
    outcome = start_training(avatar, source=EventSource.STAFF)

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.READY_FOR_TRAINING
    assert "field required" in outcome.detail
    refused = Training.objects.get(avatar=avatar)
    assert refused.outcome == TrainingOutcome.REFUSED
    assert refused.error_type == "http_422" and "field required" in refused.error_message
    assert not fal.jobs

    again = start_training(avatar, source=EventSource.STAFF)  # startable again
    assert again.changed and again.training.fal_request_id in fal.jobs


@pytest.mark.parametrize("code", [401, 403])
def test_a_submit_refused_for_the_account_alerts_staff(fal, make_avatar, code):
    fal.refuse_next_submit(code)
    avatar = make_avatar()
    start_training(avatar, source=EventSource.STAFF)
    avatar.refresh_from_db()
    # 401: our key is wrong, the avatar stays startable. 403: fal locked the account,
    # the start is held until the balance is back (docs/billing.md).
    expected = AvatarStatus.READY_FOR_TRAINING if code == 401 else AvatarStatus.TRAINING
    assert avatar.status == expected
    assert Notification.objects.filter(kind=NotificationKind.FAL_ACCOUNT).count() == 1


def test_a_wrong_fal_key_is_refused_and_never_logged(fal, make_avatar, settings, caplog):
    fal.expected_key = "right-id:right-secret"
    settings.FAL_KEY = "wrong-id:wrong-secret-value"
    avatar = make_avatar()
    with caplog.at_level(logging.DEBUG):
        start_training(avatar, source=EventSource.STAFF)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.READY_FOR_TRAINING
    training = Training.objects.get(avatar=avatar)
    assert training.error_type == "http_401"
    assert "wrong-secret-value" not in caplog.text
    assert "wrong-secret-value" not in training.error_message


def test_a_lost_submit_answer_stays_submitting_with_a_note_and_is_never_resent(
    fal, make_avatar, settings
):
    from monitoring.models import AvatarEvent, EventKind

    settings.FAL_SUBMIT_TIMEOUT_SECONDS = 1.0
    fal.submit_latency = 2.0
    avatar = make_avatar()

    start_training(avatar, source=EventSource.STAFF)
    again = start_training(Avatar.objects.get(pk=avatar.pk), source=EventSource.STAFF)

    training = Training.objects.get(avatar=avatar)
    assert len(fal.submissions) == 1 and not again.changed
    assert Avatar.objects.get(pk=avatar.pk).status == AvatarStatus.TRAINING
    assert training.fal_status == FalStatus.SUBMITTING and training.fal_request_id is None
    note = AvatarEvent.objects.get(avatar=avatar, kind=EventKind.NOTE)
    assert "not resubmitted" in note.message
