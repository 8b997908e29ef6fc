"""POST /webhooks/fal/: signed deliveries verified against the emulator's JWKS.

The signing key is generated locally by the emulator's ``WebhookSigner`` and served
as fal's JWKS over HTTPS by the emulator; the verify function is never patched.
"""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from django.db import connection
from django.test import Client, RequestFactory

from fakes.fal_signing import delivery_body, lora_payload
from monitoring import transitions
from monitoring.fal import deliveries, signing_keys, views
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    FalSigningKeys,
    Training,
    WebhookDelivery,
    WebhookOutcome,
    WebhookVerdict,
)
from notifications.models import Notification
from tests.support import WEBHOOK_URL as URL
from tests.support import snapshot


def status_events(avatar: Avatar) -> int:
    return AvatarEvent.objects.filter(avatar=avatar, kind=EventKind.STATUS).count()


# --- the happy path --------------------------------------------------------------------


def test_it_completes_the_avatar_and_queues_exactly_one_notification(deliver, training_avatar):
    avatar, training = training_avatar("req-ok")
    body = delivery_body("req-ok", payload=lora_payload("req-ok"))

    response = deliver(
        body, headers=None, HTTP_COOKIE="sessionid=secret", HTTP_AUTHORIZATION="Key x:y"
    )

    assert response.status_code == 200
    assert response.json() == {"outcome": "applied"}
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert training.lora_url.endswith("/req-ok/pytorch_lora_weights.safetensors")
    assert training.config_url.endswith("/req-ok/config.json")
    assert training.result == lora_payload("req-ok")
    assert Notification.objects.filter(training=training).count() == 1
    event = AvatarEvent.objects.get(avatar=avatar, kind=EventKind.STATUS, new_status="completed")
    assert event.source == EventSource.WEBHOOK

    delivery = WebhookDelivery.objects.get()
    assert (delivery.verdict, delivery.outcome) == (WebhookVerdict.VALID, WebhookOutcome.APPLIED)
    assert delivery.training == training
    assert delivery.body == body.decode()
    assert delivery.body_size == len(body)
    assert delivery.remote_addr == "127.0.0.1"
    assert delivery.fal_status == "OK"
    assert delivery.headers["X-Fal-Webhook-Request-Id"] == "req-ok"
    assert delivery.headers["X-Fal-Webhook-User-Id"] == "fal-test-user"
    # Never cookies or credentials, whatever the client sends.
    stored = json.dumps(delivery.headers).lower()
    assert "cookie" not in stored and "authorization" not in stored and "secret" not in stored


def test_the_owners_message_is_in_their_language_to_their_chat_and_names_the_avatar(
    deliver, make_owner, training_avatar
):
    owner = make_owner(telegram_id=555_000_111, language="en")
    avatar, training = training_avatar("req-en", owner=owner, name="Summer look")

    deliver(delivery_body("req-en", payload=lora_payload("req-en")))

    message = Notification.objects.get(training=training)
    assert message.chat_id == 555_000_111
    assert message.owner == owner and message.avatar == avatar
    assert "<b>Summer look</b>" in message.text
    assert "ready" in message.text.lower()


def test_a_stuck_training_completed_by_webhook_says_so_on_its_timeline(deliver, training_avatar):
    avatar, training = training_avatar("req-was-stuck")
    transitions.flag_stuck(training, reason="in queue for 45 min")

    deliver(delivery_body("req-was-stuck", payload=lora_payload("req-was-stuck")))

    training.refresh_from_db()
    assert training.stuck_since is None
    event = AvatarEvent.objects.get(avatar=avatar, kind=EventKind.STATUS, new_status="completed")
    assert event.details["was_stuck"] == "in queue for 45 min"


def test_it_fails_the_avatar_with_fals_message_on_an_error_delivery(deliver, training_avatar):
    avatar, training = training_avatar("req-err")
    detail = {"detail": [{"loc": ["body", "images_data_url"], "msg": "Could not extract faces"}]}
    body = delivery_body(
        "req-err", status="ERROR", error="Invalid status code: 422", payload=detail
    )

    response = deliver(body)

    assert response.status_code == 200
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    assert training.error_message == "Invalid status code: 422: Could not extract faces"
    event = AvatarEvent.objects.get(avatar=avatar, new_status="error")
    assert event.message == training.error_message
    assert event.details["detail"][0]["msg"] == "Could not extract faces"
    assert Notification.objects.filter(training=training).count() == 1


def test_a_deferred_delivery_is_still_answered_200_when_the_re_check_cannot_be_queued(
    deliver, training_avatar, monkeypatch, django_capture_on_commit_callbacks
):
    import django_q.tasks

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(django_q.tasks, "async_task", broker_down)
    _, training = training_avatar("req-deferred")

    with django_capture_on_commit_callbacks(execute=True):
        response = deliver(delivery_body("req-deferred", payload=None, payload_error="too large"))

    # Stored and answered: the next periodic check fetches the result (due now).
    assert response.status_code == 200 and response.json() == {"outcome": "deferred"}
    training.refresh_from_db()
    assert training.next_check_at is not None
    assert WebhookDelivery.objects.get().outcome == WebhookOutcome.DEFERRED


def test_it_leaves_a_payload_fal_could_not_serialise_to_the_worker(
    deliver, fal, training_avatar, django_capture_on_commit_callbacks
):
    request_id = emulator_job(fal)
    avatar, training = training_avatar(request_id)
    fal.finish(request_id)
    Training.objects.filter(pk=training.pk).update(next_check_at=None)
    body = delivery_body(request_id, payload=None, payload_error="Output too large to serialise")

    before = time.time()
    with django_capture_on_commit_callbacks(execute=True):
        response = deliver(body)

    assert response.status_code == 200
    assert response.json() == {"outcome": "deferred"}
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING  # nothing fetched inside the request
    assert fal.result_calls[request_id] == 0
    assert training.next_check_at is not None and training.next_check_at.timestamp() >= before - 1
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookOutcome.DEFERRED
    assert delivery.error == "Output too large to serialise"
    assert Notification.objects.count() == 0

    # The worker's task, queued on commit, fetches the result from fal's queue.
    from django_q.models import OrmQ

    from monitoring import tasks

    queued = [task for task in OrmQ.objects.all() if task.func() == "monitoring.tasks.recheck"]
    assert len(queued) == 1
    tasks.recheck(*queued[0].task["args"], **queued[0].task["kwargs"])

    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert training.lora_url == lora_payload(request_id)["diffusers_lora_file"]["url"]
    assert Notification.objects.count() == 1


def emulator_job(fal) -> str:
    """A real job on the emulator (as our submit would create), for checks to find."""
    import requests

    answer = requests.post(
        f"{fal.base_url}/fal-ai/flux-lora-portrait-trainer",
        json={"images_data_url": "https://example.com/p.zip", "trigger_phrase": "ohwx"},
        headers={"Authorization": "Key test-key-id:test-key-secret-value"},
        verify=fal.cert_file,
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()["request_id"]


# --- duplicates and races ----------------------------------------------------------------


def test_it_applies_the_same_delivery_sent_three_times_once(deliver, fal, training_avatar):
    avatar, training = training_avatar("req-dup")
    body = delivery_body("req-dup", payload=lora_payload("req-dup"))
    headers = fal.signer.headers(body, "req-dup")

    answers = [deliver(body, headers=headers) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["outcome"] for a in answers] == ["applied", "replay", "replay"]
    assert status_events(avatar) == 2  # ready→training, training→completed
    assert Notification.objects.count() == 1
    replays = WebhookDelivery.objects.filter(outcome=WebhookOutcome.REPLAY)
    assert replays.count() == 2
    assert all(r.training_id == training.pk for r in replays)


def test_it_treats_a_re_signed_duplicate_as_already_done(deliver, fal, training_avatar):
    avatar, _ = training_avatar("req-resigned")
    body = delivery_body("req-resigned", payload=lora_payload("req-resigned"))

    first = deliver(body, headers=fal.signer.headers(body, "req-resigned"))
    # fal retries with a fresh timestamp: a new signature, not a replay.
    again = deliver(
        body, headers=fal.signer.headers(body, "req-resigned", timestamp=int(time.time()) - 5)
    )

    assert first.json()["outcome"] == "applied"
    assert again.status_code == 200
    assert again.json()["outcome"] == "already_done"
    assert status_events(avatar) == 2
    assert Notification.objects.count() == 1
    duplicate = WebhookDelivery.objects.get(outcome=WebhookOutcome.ALREADY_DONE)
    assert duplicate.error == "already completed"


def test_it_changes_nothing_when_the_periodic_check_finished_first(deliver, training_avatar):
    avatar, training = training_avatar("req-late")
    transitions.complete(training, lora_url="https://v3.fal.media/x.safetensors", source="check")
    before = snapshot()

    response = deliver(delivery_body("req-late", status="ERROR", error="late and wrong"))

    assert response.status_code == 200
    assert response.json()["outcome"] == "already_done"
    assert snapshot() == before
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


def test_it_records_an_unknown_request_id_and_the_sweep_applies_it_when_the_id_appears(
    deliver, make_avatar
):
    body = delivery_body("req-early", payload=lora_payload("req-early"))
    response = deliver(body)
    assert response.status_code == 200
    assert response.json()["outcome"] == "unmatched"
    assert WebhookDelivery.objects.get().outcome == WebhookOutcome.UNMATCHED

    # The start of the training saves the request id after fal already delivered.
    avatar = make_avatar()
    started = transitions.begin_training(
        avatar,
        endpoint="fal-ai/flux-lora-portrait-trainer",
        arguments={},
        webhook_url="",
        source=EventSource.COMMAND,
    )
    transitions.record_submitted(started.training, request_id="req-early", source="command")
    # The worker's sweep (every minute) applies it.
    assert deliveries.sweep() == 1
    assert deliveries.sweep() == 0

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookOutcome.APPLIED
    assert delivery.training_id == started.training.pk
    assert Notification.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_webhook_that_beats_the_submit_answer_is_applied_by_the_sweep_once_the_id_is_saved(
    fal, live_server, make_avatar, monkeypatch
):
    """End to end: fal finishes and delivers before its submit answer reaches us."""
    from monitoring.trainings import start_training

    # The live server's request threads must not keep their connections open past the
    # request (CONN_MAX_AGE), or the test database cannot be dropped afterwards.
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)

    fal.webhook_target = live_server.url + URL  # fal's webhook thread posts to us
    fal.submit_latency = 0.6  # the job exists and ends while our submit still waits
    avatar = make_avatar()

    start_training(avatar, source=EventSource.COMMAND)
    assert deliveries.sweep() == 1  # the worker's next sweep

    avatar.refresh_from_db()
    training = Training.objects.get(avatar=avatar)
    delivery = WebhookDelivery.objects.get()
    assert [d.get("status_code") for d in fal.deliveries] == [200]
    assert delivery.received_at < training.submitted_at  # it really came first
    assert delivery.outcome == WebhookOutcome.APPLIED
    assert delivery.training_id == training.pk
    assert avatar.status == AvatarStatus.COMPLETED
    assert Notification.objects.filter(avatar=avatar).count() == 1


def test_it_ignores_a_delivery_for_an_older_attempt_of_the_avatar(deliver, training_avatar):
    avatar, first = training_avatar("req-old")
    transitions.fail(first, error_message="boom", source="check")
    transitions.retrain(avatar, source="staff")
    second = transitions.begin_training(
        avatar,
        endpoint="fal-ai/flux-lora-portrait-trainer",
        arguments={},
        webhook_url="",
        source="staff",
    ).training
    transitions.record_submitted(second, request_id="req-new", source="staff")
    before = snapshot()

    response = deliver(delivery_body("req-old", payload=lora_payload("req-old")))

    assert response.status_code == 200
    assert response.json()["outcome"] == "already_done"
    assert snapshot() == before
    assert "newer" in WebhookDelivery.objects.get().error


def _race(*targets) -> list:
    """Run the targets at the same moment in threads, each with its own connection."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)
    errors: list = []

    def run(index, target):
        try:
            barrier.wait(timeout=10)
            results[index] = target()
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_a_delivery_racing_the_periodic_check_gives_one_transition_and_one_notification(
    fal, training_avatar
):
    winners = []
    # The webhook starts a little later each round, so that both orders happen: the
    # check's HTTPS calls to the emulator take a few hundred milliseconds here.
    for round_, delay in enumerate([0.0, 0.05, 0.2, 0.4, 0.8]):
        # A real job on the emulator, finished, so the check sees COMPLETED too.
        request_id = emulator_job(fal)
        avatar, training = training_avatar(request_id)
        fal.finish(request_id)
        body, headers = fal.webhook_for(request_id)

        def webhook(body=body, headers=headers, delay=delay):
            time.sleep(delay)
            return Client().post(URL, data=body, content_type="application/json", headers=headers)

        def periodic_check(training_id=training.pk):
            from monitoring.status_checks import check_trainings

            return check_trainings([Training.objects.get(pk=training_id)], source="check")

        response, _reports = _race(webhook, periodic_check)

        assert response.status_code == 200, round_
        avatar.refresh_from_db()
        assert avatar.status == AvatarStatus.COMPLETED
        assert status_events(avatar) == 2
        assert Notification.objects.filter(avatar=avatar).count() == 1
        assert WebhookDelivery.objects.get(request_id=request_id).outcome in (
            WebhookOutcome.APPLIED,
            WebhookOutcome.ALREADY_DONE,
        )
        winners.append(AvatarEvent.objects.get(avatar=avatar, new_status="completed").source)
    print("winners by round:", winners)


@pytest.mark.django_db(transaction=True)
def test_concurrent_copies_of_one_delivery_give_one_transition(fal, training_avatar):
    avatar, _ = training_avatar("req-storm")
    body = delivery_body("req-storm", payload=lora_payload("req-storm"))
    signed = [
        fal.signer.headers(body, "req-storm", timestamp=int(time.time()) - i) for i in range(4)
    ]

    def post(headers):
        return lambda: Client().post(
            URL, data=body, content_type="application/json", headers=headers
        )

    responses = _race(*(post(h) for h in signed * 2))

    assert {r.status_code for r in responses} == {200}
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes.count("applied") == 1
    assert status_events(avatar) == 2
    assert Notification.objects.count() == 1


# --- bad input ---------------------------------------------------------------------------


def _signed(fal, body: bytes, request_id: str, **kw) -> dict:
    return fal.signer.headers(body, request_id, **kw)


BAD_INPUT = {
    "missing signature header": lambda fal, body: (
        body,
        {k: v for k, v in _signed(fal, body, "req-bad").items() if k != "X-Fal-Webhook-Signature"},
        401,
    ),
    "missing timestamp header": lambda fal, body: (
        body,
        {k: v for k, v in _signed(fal, body, "req-bad").items() if k != "X-Fal-Webhook-Timestamp"},
        401,
    ),
    "no headers at all": lambda fal, body: (body, {}, 401),
    "tampered body": lambda fal, body: (
        body.replace(b"v3.fal.media", b"evil.example"),
        _signed(fal, body, "req-bad"),
        401,
    ),
    "signature from another key": lambda fal, body: (
        body,
        __import__("fakes.fal_signing").fal_signing.WebhookSigner().headers(body, "req-bad"),
        401,
    ),
    "stale timestamp": lambda fal, body: (
        body,
        _signed(fal, body, "req-bad", timestamp=int(time.time()) - 301),
        401,
    ),
    "timestamp from the future": lambda fal, body: (
        body,
        _signed(fal, body, "req-bad", timestamp=int(time.time()) + 330),  # slack for a slow run
        401,
    ),
    "garbage signature": lambda fal, body: (
        body,
        {**_signed(fal, body, "req-bad"), "X-Fal-Webhook-Signature": "zz" * 64},
        401,
    ),
    "malformed JSON": lambda fal, body: (b"{not json", _signed(fal, b"{not json", "req-bad"), 400),
    "missing request_id": lambda fal, body: (
        b'{"status": "OK", "payload": null}',
        _signed(fal, b'{"status": "OK", "payload": null}', "req-bad"),
        400,
    ),
    "header request id differs from the body's": lambda fal, body: (
        body,
        _signed(fal, body, "req-other"),
        400,
    ),
    "unknown status": lambda fal, body: (
        body.replace(b'"OK"', b'"COMPLETED"'),
        _signed(fal, body.replace(b'"OK"', b'"COMPLETED"'), "req-bad"),
        400,
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_it_refuses_bad_input_with_a_clear_status_and_changes_nothing(
    case, deliver, fal, training_avatar
):
    training_avatar("req-bad")
    good = delivery_body("req-bad", payload=lora_payload("req-bad"))
    body, headers, expected = BAD_INPUT[case](fal, good)
    before = snapshot()

    response = deliver(body, headers=headers)

    assert response.status_code == expected
    assert response.json()["error"]
    assert snapshot() == before
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookOutcome.REJECTED
    assert delivery.error == response.json()["error"]
    if expected == 401:
        assert delivery.verdict != WebhookVerdict.VALID
        assert len(delivery.body) <= deliveries.EXCERPT_BYTES


def test_it_refuses_a_body_larger_than_the_limit_from_content_length(
    deliver, fal, settings, training_avatar
):
    settings.WEBHOOK_MAX_BODY_BYTES = 2048
    training_avatar("req-big")
    body = delivery_body("req-big", payload={**lora_payload("req-big"), "pad": "x" * 5000})
    before = snapshot()

    response = deliver(body)

    assert response.status_code == 413
    assert "2048" in response.json()["error"]
    assert snapshot() == before
    delivery = WebhookDelivery.objects.get()
    assert (delivery.verdict, delivery.body, delivery.body_size) == (
        WebhookVerdict.TOO_LARGE,
        "",
        len(body),
    )


def test_it_refuses_an_absurd_content_length_without_reading_anything(client, training_avatar):
    training_avatar("req-absurd")
    before = snapshot()

    response = client.post(
        URL, data=b"{}", content_type="application/json", CONTENT_LENGTH="99999999999999"
    )

    assert response.status_code == 413
    assert snapshot() == before
    assert WebhookDelivery.objects.get().verdict == WebhookVerdict.TOO_LARGE


def test_it_counts_while_reading_when_there_is_no_content_length(fal, settings, training_avatar):
    """A chunked request has no Content-Length: the server's stream is read with a count."""
    settings.WEBHOOK_MAX_BODY_BYTES = 2048
    training_avatar("req-chunked")
    body = delivery_body("req-chunked", payload={**lora_payload("req-chunked"), "pad": "x" * 5000})
    request = RequestFactory().post(
        URL,
        data=b"",
        content_type="application/json",
        headers=fal.signer.headers(body, "req-chunked"),
    )
    request.META.pop("CONTENT_LENGTH", None)
    request.environ["wsgi.input"] = io.BytesIO(body)
    request.environ["wsgi.input_terminated"] = True
    before = snapshot()

    response = views.fal_webhook(request)

    assert response.status_code == 413
    assert snapshot() == before
    delivery = WebhookDelivery.objects.get()
    assert delivery.verdict == WebhookVerdict.TOO_LARGE
    assert len(delivery.body) == deliveries.EXCERPT_BYTES


def test_it_reads_a_chunked_delivery_within_the_limit(fal, training_avatar):
    avatar, _ = training_avatar("req-chunk-ok")
    body = delivery_body("req-chunk-ok", payload=lora_payload("req-chunk-ok"))
    request = RequestFactory().post(
        URL,
        data=b"",
        content_type="application/json",
        headers=fal.signer.headers(body, "req-chunk-ok"),
    )
    request.META.pop("CONTENT_LENGTH", None)
    request.environ["wsgi.input"] = io.BytesIO(body)
    request.environ["wsgi.input_terminated"] = True

    response = views.fal_webhook(request)

    assert response.status_code == 200
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


def test_djangos_upload_limit_does_not_turn_a_delivery_into_a_400(
    deliver, settings, training_avatar
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    avatar, _ = training_avatar("req-upload")

    response = deliver(delivery_body("req-upload", payload=lora_payload("req-upload")))

    assert response.status_code == 200
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_it_answers_405_in_json_to_other_methods(method, client, training_avatar):
    training_avatar("req-method")
    before = snapshot()

    response = getattr(client, method)(URL)

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json() == {"error": "method not allowed, use POST"}
    assert snapshot() == before


# --- signing keys -----------------------------------------------------------------------


def test_it_accepts_a_rotated_key_without_a_restart(deliver, fal, training_avatar):
    first_avatar, _ = training_avatar("req-before-rotation")
    assert (
        deliver(delivery_body("req-before-rotation", payload=lora_payload("x"))).status_code == 200
    )
    # fal rotates: the JWKS now also lists a new key, and new deliveries use it.
    FalSigningKeys.objects.update(last_attempt_at=None)  # the rate limit window has passed
    fal.signer.rotate(keep_old=False)
    second_avatar, _ = training_avatar("req-after-rotation")

    response = deliver(delivery_body("req-after-rotation", payload=lora_payload("y")))

    assert response.status_code == 200
    second_avatar.refresh_from_db()
    assert second_avatar.status == AvatarStatus.COMPLETED
    cached = FalSigningKeys.objects.get(url=fal.jwks_url)
    assert [k["kid"] for k in cached.keys] == [k["kid"] for k in fal.signer.jwks()["keys"]]


def test_forged_deliveries_cannot_make_us_refetch_the_keys_more_than_once_a_minute(
    deliver, fal, training_avatar
):
    from fakes.fal_signing import WebhookSigner

    avatar, _ = training_avatar("req-forged")
    body = delivery_body("req-forged", payload=lora_payload("req-forged"))
    forger = WebhookSigner()
    assert deliver(body, headers=forger.headers(body, "req-forged")).status_code == 401
    first_fetch = FalSigningKeys.objects.get()  # the first miss fetched the JWKS once

    answers = [
        deliver(body, headers=forger.headers(body, "req-forged")).status_code for _ in range(20)
    ]

    assert answers == [401] * 20
    after = FalSigningKeys.objects.get()
    assert after.last_attempt_at == first_fetch.last_attempt_at
    assert after.fetched_at == first_fetch.fetched_at
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING


def test_the_key_cache_is_shared_by_workers_and_expires(deliver, fal, settings, training_avatar):
    training_avatar("req-cache-1")
    training_avatar("req-cache-2")
    training_avatar("req-cache-3")
    assert deliver(delivery_body("req-cache-1", payload=lora_payload("a"))).status_code == 200
    row = FalSigningKeys.objects.get()

    signing_keys.forget()  # another web worker, with an empty memory
    assert deliver(delivery_body("req-cache-2", payload=lora_payload("b"))).status_code == 200
    assert FalSigningKeys.objects.get().fetched_at == row.fetched_at  # no second fetch

    # Past the cache age the keys are fetched again, even though they still verify.
    settings.FAL_JWKS_CACHE_SECONDS = 1
    FalSigningKeys.objects.update(last_attempt_at=None)
    time.sleep(1.1)
    assert deliver(delivery_body("req-cache-3", payload=lora_payload("c"))).status_code == 200
    assert FalSigningKeys.objects.get().fetched_at > row.fetched_at


def _cache_for_a_dead_endpoint(fal, settings, *, age_seconds: float) -> None:
    """Keys fetched earlier from an endpoint that is now down (nothing listens there)."""
    import socket

    from django.utils import timezone

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.FAL_WEBHOOK_JWKS_URL = f"https://127.0.0.1:{port}/.well-known/jwks.json"
    settings.FAL_JWKS_CACHE_SECONDS = 3600
    fetched = timezone.now() - timezone.timedelta(seconds=age_seconds)
    FalSigningKeys.objects.create(
        url=settings.FAL_WEBHOOK_JWKS_URL,
        keys=signing_keys.parse_jwks(fal.signer.jwks()),
        fetched_at=fetched,
        last_attempt_at=fetched,
    )


def test_it_serves_from_the_cache_while_fals_key_endpoint_is_briefly_down(
    deliver, fal, settings, training_avatar
):
    avatar, _ = training_avatar("req-down")
    _cache_for_a_dead_endpoint(fal, settings, age_seconds=3600 + 60)

    response = deliver(delivery_body("req-down", payload=lora_payload("req-down")))

    assert response.status_code == 200
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert "ConnectError" in FalSigningKeys.objects.get().last_error


def test_it_answers_503_when_no_usable_key_exists_so_fal_retries(
    deliver, fal, settings, training_avatar
):
    training_avatar("req-nokeys")
    _cache_for_a_dead_endpoint(
        fal, settings, age_seconds=3600 + signing_keys.STALE_GRACE.total_seconds() + 60
    )
    before = snapshot()

    response = deliver(delivery_body("req-nokeys", payload=lora_payload("req-nokeys")))

    assert response.status_code == 503
    assert snapshot() == before
    assert WebhookDelivery.objects.get().verdict == WebhookVerdict.UNVERIFIABLE


# --- our own failures --------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken_step",
    [(deliveries, "_training_and_replay"), (transitions, "complete")],
    ids=["finding the training", "applying it"],
)
def test_it_answers_500_and_keeps_the_delivery_when_processing_fails(
    broken_step, deliver, monkeypatch, training_avatar, admin_client
):
    avatar, training = training_avatar("req-crash")

    def broken(*args, **kwargs):
        raise RuntimeError("database went away mid-transition")

    monkeypatch.setattr(*broken_step, broken)
    response = deliver(delivery_body("req-crash", payload=lora_payload("req-crash")))

    assert response.status_code == 500
    assert response.json() == {"error": "processing failed, please retry"}
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookOutcome.FAILED
    assert "database went away" in delivery.error
    assert "RuntimeError" in delivery.traceback
    assert delivery.body  # kept whole: staff can re-process it

    # Once fixed, staff re-process it from the admin (and confirm).
    monkeypatch.undo()
    page = admin_client.post(
        "/admin/monitoring/webhookdelivery/",
        {"action": "reprocess", "_selected_action": [delivery.pk], "confirmed": "yes"},
        follow=True,
    )
    assert page.status_code == 200
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    delivery.refresh_from_db()
    assert delivery.outcome == WebhookOutcome.APPLIED
    event = AvatarEvent.objects.get(avatar=avatar, new_status="completed")
    assert event.source == EventSource.STAFF
    assert Notification.objects.count() == 1


def test_fal_retrying_a_delivery_we_failed_is_processed_not_dismissed_as_a_replay(
    deliver, fal, monkeypatch, training_avatar
):
    avatar, _ = training_avatar("req-retry")
    body = delivery_body("req-retry", payload=lora_payload("req-retry"))
    headers = fal.signer.headers(body, "req-retry")
    monkeypatch.setattr(transitions, "complete", lambda *a, **k: 1 / 0)
    assert deliver(body, headers=headers).status_code == 500
    monkeypatch.undo()

    response = deliver(body, headers=headers)

    assert response.json() == {"outcome": "applied"}
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
