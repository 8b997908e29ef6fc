"""One outcome path: the same fal answer ends the same way whichever source brought it.

Each answer below is given by the emulator and learned through each of the five
sources (the webhook, the periodic check, a staff re-check, fal's record after the
queue forgot the job, and adoption); the avatar's status, the owner's message (text
and count), the outcome's events and the log line must be the same for all five.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from fakes.fal_signing import lora_payload
from monitoring import tasks
from monitoring.fal import client as fal_client
from monitoring.fal import payloads
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    Training,
)
from monitoring.trainings import adopt_training, cancel_training, recheck, start_training
from notifications.models import Notification
from tests.fixtures_fal import submit_directly
from tests.support import run_queued_monitoring_tasks

WEBHOOK_URL = "/webhooks/fal/"
OWNER_ID = 424242
NAME = "Anna portrait"
INPUT = {"images_data_url": "https://photos.example/anna.zip", "trigger_phrase": "ohwx"}
FOREIGN = "https://evil.example/files/lora.safetensors"

ANSWERS = {
    "success": {},
    "success without a LoRA": {
        "result": {"config_file": {"url": lora_payload("x")["config_file"]["url"]}}
    },
    "422 photo problem": {
        "error": "Could not extract enough faces",
        "error_type": "image_load_error",
        "result_status": 422,
    },
    "platform 5xx": {
        "error": "Runner disconnected",
        "error_type": "runner_disconnected",
        "result_status": 503,
    },
    "cancelled after a staff cancel": {"queue_seconds": FOREVER, "on_cancel": "error"},
    "foreign result URL": {
        "result": {**lora_payload("x"), "diffusers_lora_file": {"url": FOREIGN}}
    },
}
OUTCOME_LOG_PREFIXES = ("🎉", "❌", "Обучение отменено", "⚠️ Обучение зависло")


@dataclass(frozen=True)
class Seen:
    status: str
    owner_messages: tuple[tuple[str, str], ...]
    events: tuple[tuple[str, str], ...]
    logs: tuple[str, ...]


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.FAL_PLATFORM_TIMEOUT_SECONDS = 2.0
    # One attempt each: the retries of fal's own failures have their own tests.
    settings.TRAINING_AUTO_RETRY_MAX = 0


def _cancelling(answer: str) -> bool:
    return answer == "cancelled after a staff cancel"


def _started(fal, make_avatar, owner, answer: str, *, forget: bool = False) -> Training:
    """Our own start of a training whose job ends with ``answer`` (no webhook reaches us)."""
    fal.drop_webhooks()
    fal.script(**ANSWERS[answer], **({"queue_forgets_after": 0} if forget else {}))
    avatar = make_avatar(owner=owner, name=NAME)
    training = start_training(avatar, source=EventSource.COMMAND).training
    assert training is not None and training.fal_request_id
    if _cancelling(answer):
        assert "Cancellation requested" in cancel_training(training, source=EventSource.STAFF)
    return training


def _due_check(training: Training) -> None:
    Training.objects.filter(pk=training.pk).update(
        next_check_at=timezone.now() - timedelta(seconds=1)
    )
    tasks.run_check()


def by_webhook(fal, client, make_avatar, owner, answer: str, on_commit) -> Avatar:
    training = _started(fal, make_avatar, owner, answer)
    body, headers = fal.webhook_for(training.fal_request_id)
    with on_commit(execute=True):
        response = client.post(
            WEBHOOK_URL, data=body, content_type="application/json", headers=headers
        )
    assert response.status_code == 200, response.content
    if response.json()["outcome"] == "deferred":
        run_queued_monitoring_tasks()  # the worker fetches the result from fal's queue
    return training.avatar


def by_periodic_check(fal, client, make_avatar, owner, answer: str, on_commit) -> Avatar:
    training = _started(fal, make_avatar, owner, answer)
    _due_check(training)
    return training.avatar


def by_staff_recheck(fal, client, make_avatar, owner, answer: str, on_commit) -> Avatar:
    training = _started(fal, make_avatar, owner, answer)
    recheck([Training.objects.get(pk=training.pk)], source=EventSource.STAFF)
    return training.avatar


def by_fals_record(fal, client, make_avatar, owner, answer: str, on_commit) -> Avatar:
    training = _started(fal, make_avatar, owner, answer, forget=True)
    _due_check(training)  # the queue answers 404: fal's record decides
    return training.avatar


def by_adoption(fal, client, make_avatar, owner, answer: str, on_commit) -> Avatar:
    fal.drop_webhooks()
    fal.script(**ANSWERS[answer])
    endpoint = payloads.ENDPOINTS["portrait"]
    request_id = submit_directly(fal, endpoint, INPUT)
    if _cancelling(answer):
        assert fal_client.cancel(endpoint, request_id) == "CANCELLATION_REQUESTED"
    adopted = adopt_training(
        request_id=request_id,
        endpoint=endpoint,
        owner_telegram_id=OWNER_ID,
        name=NAME,
        notify=True,
        source=EventSource.STAFF,
    )
    return adopted.avatar


SOURCES = [by_webhook, by_periodic_check, by_staff_recheck, by_fals_record, by_adoption]


def _seen(avatar: Avatar, records: list[logging.LogRecord]) -> Seen:
    avatar.refresh_from_db()
    messages = Notification.objects.filter(avatar=avatar, audience="owner").order_by("pk")
    events = AvatarEvent.objects.filter(avatar=avatar).order_by("pk")
    return Seen(
        status=avatar.status,
        owner_messages=tuple(messages.values_list("kind", "text")),
        events=tuple(
            (e.kind, e.new_status)
            for e in events
            if e.kind == EventKind.STUCK
            or (e.kind == EventKind.STATUS and e.old_status == AvatarStatus.TRAINING)
        ),
        logs=tuple(
            prefix
            for record in records
            for prefix in OUTCOME_LOG_PREFIXES
            if record.getMessage().startswith(prefix)
        ),
    )


EXPECTED_STATUS = {
    "success": AvatarStatus.COMPLETED,
    "success without a LoRA": AvatarStatus.ERROR,
    "422 photo problem": AvatarStatus.ERROR,
    "platform 5xx": AvatarStatus.ERROR,
    "cancelled after a staff cancel": AvatarStatus.CANCELLED,
    "foreign result URL": AvatarStatus.TRAINING,  # flagged for staff, owner told nothing
}
EXPECTED_OWNER_MESSAGE = {
    "success": ("ready", "is ready"),
    "success without a LoRA": ("failed", "the training service had a problem"),
    "422 photo problem": ("failed", "photos"),
    "platform 5xx": ("failed", "you were not charged"),
    "cancelled after a staff cancel": ("cancelled", "was cancelled"),
    "foreign result URL": None,
}


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_every_source_ends_the_same_answer_the_same_way(
    answer, fal, client, make_avatar, make_owner, caplog, django_capture_on_commit_callbacks
):
    owner = make_owner(telegram_id=OWNER_ID, language="en")
    caplog.set_level(logging.INFO, logger="monitoring")
    seen: dict[str, Seen] = {}
    for source in SOURCES:
        caplog.clear()
        avatar = source(fal, client, make_avatar, owner, answer, django_capture_on_commit_callbacks)
        seen[source.__name__] = _seen(avatar, caplog.records)

    first = seen["by_webhook"]
    assert first.status == EXPECTED_STATUS[answer]
    expected = EXPECTED_OWNER_MESSAGE[answer]
    if expected is None:
        assert first.owner_messages == ()
        assert first.events == ((EventKind.STUCK, ""),)
    else:
        [(kind, text)] = first.owner_messages
        assert kind == expected[0] and expected[1] in text.lower(), text
        assert first.events == ((EventKind.STATUS, first.status),)
    assert len(first.logs) == 1, first.logs
    for name, other in seen.items():
        assert other == first, f"{name} differs from the webhook: {other} != {first}"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_staff_cancel_racing_fals_failure_webhook_always_ends_cancelled_once(
    fal, make_avatar, make_owner, monkeypatch
):
    """The cancel is recorded before fal is asked; fal's failure (the cancel taking
    effect) is delivered by another thread as soon as fal has it, before or after
    cancel_training returns."""
    from django.test import Client

    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)
    owner = make_owner(telegram_id=OWNER_ID, language="en")
    fal.drop_webhooks()
    # A failure that does not itself say "cancelled": only the recorded cancel does.
    fal.script(queue_seconds=FOREVER, on_cancel="error", cancel_error_type=None)
    outcomes = []
    for _round in range(40):
        avatar = make_avatar(owner=owner, name=NAME)
        training = start_training(avatar, source=EventSource.COMMAND).training
        assert training is not None
        request_id = training.fal_request_id

        def deliver_failure(request_id=request_id):
            while fal.state_of(request_id) != "COMPLETED":
                threading.Event().wait(0.001)
            body, headers = fal.webhook_for(request_id)
            Client().post(WEBHOOK_URL, data=body, content_type="application/json", headers=headers)
            connection.close()

        webhook = threading.Thread(target=deliver_failure)
        webhook.start()
        cancel_training(training, source=EventSource.STAFF)
        webhook.join(timeout=30)
        avatar.refresh_from_db()
        messages = list(
            Notification.objects.filter(avatar=avatar, audience="owner").values_list(
                "kind", flat=True
            )
        )
        outcomes.append((avatar.status, tuple(messages)))

    assert set(outcomes) == {(AvatarStatus.CANCELLED, ("cancelled",))}
