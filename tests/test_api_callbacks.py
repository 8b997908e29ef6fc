"""Event callbacks: written with the outcome, signed, retried by their own policy."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from monitoring import transitions
from monitoring.api import callbacks
from monitoring.api.models import (
    CallbackAttempt,
    CallbackStatus,
    ClientAvatar,
    EventCallback,
)
from monitoring.models import EventSource, Training
from tests.api_support import BODY, Receiver, run_callbacks, run_check

pytestmark = pytest.mark.django_db


@pytest.fixture
def bot(make_api_client, receiver):
    return make_api_client(callback_url=receiver.url)


def verified(request: dict, secret: str) -> dict:
    """The event, after checking its Standard Webhooks signature (raises when it is bad)."""
    headers = {name.lower(): value for name, value in request["headers"].items()}
    return Webhook(secret).verify(request["body"], headers)


def start(bot, fal, **script) -> dict:
    if script:
        fal.script(**script)
    response = bot.post("/api/v1/trainings", BODY, key=uuid.uuid4().hex)
    assert response.status_code == 201, response.content
    return response.json()


def make_due(callback: EventCallback) -> None:
    EventCallback.objects.filter(pk=callback.pk).update(next_attempt_at=timezone.now())


def test_a_completed_training_calls_back_once_with_a_valid_signature(fal, bot, receiver):
    answer = start(bot, fal)

    run_check()
    run_check()  # nothing new: no second event
    [callback] = EventCallback.objects.all()
    assert callbacks.deliver(callback.pk) == CallbackStatus.DELIVERED
    assert callbacks.deliver(callback.pk) == "not due"
    assert callbacks.sweep() == 0

    [request] = receiver.requests
    event = verified(request, bot.made.callback_secret)
    assert event["type"] == "avatar.completed"
    assert event["data"]["id"] == answer["avatar"]["id"]
    assert event["data"]["status"] == "completed"
    assert event["data"]["lora_url"].endswith(".safetensors")
    assert event["data"] == bot.get(f"/api/v1/avatars/{answer['avatar']['id']}").json()
    assert request["headers"]["webhook-id"] == callback.webhook_id
    assert request["path"] == "/hooks/avatars"
    callback.refresh_from_db()
    assert callback.status == CallbackStatus.DELIVERED and callback.delivered_at
    assert callback.attempt_log.get().outcome == CallbackAttempt.Outcome.DELIVERED


def test_a_wrong_secret_does_not_verify(fal, bot, receiver):
    start(bot, fal)
    run_check()
    callbacks.deliver(EventCallback.objects.get().pk)

    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        verified(receiver.requests[0], "whsec_" + "A" * 43 + "=")


def test_failed_and_cancelled_outcomes_have_their_own_types(fal, bot, receiver):
    failed = start(bot, fal, error="No faces found", error_type="face_detection_error")
    run_check()
    fal.script(queue_seconds=600, error=None, error_type=None)
    cancelled = start(bot, fal)
    bot.post(f"/api/v1/avatars/{cancelled['avatar']['id']}/cancel")
    run_check()

    for callback_id in EventCallback.objects.values_list("pk", flat=True):
        callbacks.deliver(callback_id)

    events = {
        e["data"]["id"]: e
        for e in (verified(r, bot.made.callback_secret) for r in receiver.requests)
    }
    assert events[failed["avatar"]["id"]]["type"] == "avatar.failed"
    assert events[failed["avatar"]["id"]]["data"]["error"] == "No faces found"
    assert events[cancelled["avatar"]["id"]]["type"] == "avatar.cancelled"
    assert len(receiver.requests) == 2


def test_a_500_is_retried_with_the_same_webhook_id(fal, bot, receiver, settings):
    settings.EVENT_CALLBACK_RETRY_BASE_SECONDS = 30
    receiver.statuses = [500]
    start(bot, fal)
    run_check()
    callback = EventCallback.objects.get()

    before = timezone.now()
    assert callbacks.deliver(callback.pk) == "retry"
    callback.refresh_from_db()
    assert callback.status == CallbackStatus.PENDING and callback.attempts == 1
    assert callback.next_attempt_at >= before + timedelta(seconds=29)
    assert callbacks.sweep() == 0  # not due yet
    make_due(callback)
    assert callbacks.sweep() == 1  # queued for a worker...
    assert run_callbacks() == ["delivered"]  # ...which sends it

    first, second = receiver.requests
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == callback.webhook_id
    assert verified(second, bot.made.callback_secret)["type"] == "avatar.completed"
    callback.refresh_from_db()
    assert callback.status == CallbackStatus.DELIVERED
    outcomes = list(callback.attempt_log.order_by("pk").values_list("outcome", "status_code"))
    assert outcomes == [("retry", 500), ("delivered", 204)]


def test_a_429_is_retried_no_sooner_than_its_retry_after(fal, bot, receiver, settings):
    settings.EVENT_CALLBACK_RETRY_BASE_SECONDS = 1
    receiver.statuses = [429]
    start(bot, fal)
    run_check()
    callback = EventCallback.objects.get()

    before = timezone.now()
    assert callbacks.deliver(callback.pk) == "retry"

    callback.refresh_from_db()
    assert callback.next_attempt_at >= before + timedelta(seconds=120)  # the receiver's wish
    assert callback.attempt_log.get().status_code == 429


def test_a_410_is_final_and_never_retried(fal, bot, receiver):
    receiver.statuses = [410]
    start(bot, fal)
    run_check()
    callback = EventCallback.objects.get()

    assert callbacks.deliver(callback.pk) == CallbackStatus.FAILED
    make_due(callback)
    assert callbacks.sweep() == 0
    assert callbacks.deliver(callback.pk) == "not due"
    assert len(receiver.requests) == 1
    callback.refresh_from_db()
    assert "HTTP 410" in callback.last_error


def test_a_redirect_is_not_followed_and_is_final(fal, bot, receiver):
    receiver.statuses = [302]
    start(bot, fal)
    run_check()

    assert callbacks.deliver(EventCallback.objects.get().pk) == CallbackStatus.FAILED
    assert len(receiver.requests) == 1
    assert "not followed" in EventCallback.objects.get().last_error


def test_an_unreachable_receiver_is_retried(fal, make_api_client, receiver):
    bot = make_api_client(callback_url="http://127.0.0.1:9/closed")
    start(bot, fal)
    run_check()
    callback = EventCallback.objects.get()

    assert callbacks.deliver(callback.pk) == "retry"
    attempt = callback.attempt_log.get()
    assert attempt.outcome == CallbackAttempt.Outcome.RETRY and "Connect" in attempt.error


def test_retries_stop_after_the_maximum_age(fal, bot, receiver):
    receiver.statuses = [503, 503]
    start(bot, fal)
    run_check()
    callback = EventCallback.objects.get()
    EventCallback.objects.filter(pk=callback.pk).update(
        give_up_at=timezone.now() + timedelta(seconds=5)
    )

    assert callbacks.deliver(callback.pk) == CallbackStatus.GIVEN_UP
    assert len(receiver.requests) == 1


def test_a_callback_to_a_private_address_is_refused_unless_allowed(
    fal, make_api_client, receiver, settings
):  # noqa: E501
    bot = make_api_client(callback_url=receiver.url)
    start(bot, fal)
    run_check()
    callback = EventCallback.objects.get()
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = False

    assert callbacks.deliver(callback.pk) == CallbackStatus.REFUSED
    assert receiver.requests == []
    assert "https" in EventCallback.objects.get().last_error

    for url, reason in (
        ("https://127.0.0.1/hook", "not a public address"),
        ("https://localhost/hook", "not a public address"),
        ("https://10.1.2.3/hook", "not a public address"),
        ("https://[::1]/hook", "not a public address"),
        ("https://[::ffff:192.168.0.1]/hook", "not a public address"),
        ("https://169.254.169.254/latest", "not a public address"),
    ):
        with pytest.raises(callbacks.CallbackRefused, match=reason):
            callbacks.resolve(url)

    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = True
    callbacks.resend(callback.pk)
    assert callbacks.deliver(callback.pk) == CallbackStatus.DELIVERED
    assert len(receiver.requests) == 1


def test_a_public_name_is_pinned_to_the_address_that_was_checked(monkeypatch, settings):
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = False
    import socket

    answers = {"hooks.example.com": "93.184.216.34", "evil.example.com": "127.0.0.1"}

    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(callbacks.socket, "getaddrinfo", fake_getaddrinfo)

    destination = callbacks.resolve("https://hooks.example.com/bot?x=1")
    assert destination.url == "https://93.184.216.34:443/bot?x=1"
    assert (destination.host, destination.host_header) == ("hooks.example.com", "hooks.example.com")
    with pytest.raises(callbacks.CallbackRefused):
        callbacks.resolve("https://evil.example.com/")


def test_https_receivers_get_the_event_over_a_verified_connection(
    fal,
    make_api_client,
    settings,
    tmp_path,
    monkeypatch,
):
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = True
    server = Receiver(tls_dir=tmp_path).start()
    try:
        bot = make_api_client(callback_url=server.url)
        start(bot, fal)
        run_check()
        # Trust the receiver's own certificate only now: it shares its subject name with
        # the fal emulator's, and one bundle holding both would confuse the lookup.
        monkeypatch.setenv("SSL_CERT_FILE", server.cert_file)

        outcome = callbacks.deliver(EventCallback.objects.get().pk)
        assert outcome == CallbackStatus.DELIVERED, EventCallback.objects.get().last_error
        assert verified(server.requests[0], bot.made.callback_secret)["type"] == "avatar.completed"
        headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
        assert headers["host"] == server.url.split("/")[2]
    finally:
        server.stop()


def test_stuck_events_go_only_to_clients_that_opted_in(fal, make_api_client, receiver):
    plain = make_api_client(name="plain", callback_url=receiver.url)
    keen = make_api_client(name="keen", callback_url=receiver.url, callback_stuck=True)
    for client in (plain, keen):
        start(client, fal, queue_seconds=600)
    plain_training, keen_training = Training.objects.order_by("pk")

    transitions.flag_stuck(plain_training, reason="in queue too long")
    transitions.flag_stuck(keen_training, reason="in queue too long")

    [callback] = EventCallback.objects.all()
    assert callback.client == keen.client and callback.event_type == "avatar.stuck"
    assert callbacks.deliver(callback.pk) == CallbackStatus.DELIVERED
    event = verified(receiver.requests[0], keen.made.callback_secret)
    assert event["type"] == "avatar.stuck" and event["data"]["stuck"] is True


def test_the_event_is_written_in_the_transitions_transaction(fal, bot, make_avatar):
    avatar = make_avatar()
    ClientAvatar.objects.create(avatar=avatar, client=bot.client)
    started = transitions.begin_training(
        avatar, endpoint="e", arguments={}, webhook_url="", source=EventSource.COMMAND
    )
    transitions.record_submitted(started.training, request_id="req-x", source=EventSource.COMMAND)

    with pytest.raises(RuntimeError), transaction.atomic():
        transitions.complete(started.training, lora_url="https://x/l", source=EventSource.CHECK)
        assert EventCallback.objects.count() == 1
        raise RuntimeError("the transition's transaction rolls back")

    assert EventCallback.objects.count() == 0
    training = Training.objects.get(pk=started.training.pk)
    transitions.complete(training, lora_url="https://x/l", source=EventSource.CHECK)
    transitions.complete(training, lora_url="https://x/l", source=EventSource.WEBHOOK)
    assert EventCallback.objects.count() == 1


def test_avatars_not_made_through_the_api_send_no_events(fal, bot, training_avatar):
    avatar, training = training_avatar()

    transitions.complete(training, lora_url="https://x/l", source=EventSource.CHECK)

    assert EventCallback.objects.count() == 0


def test_staff_see_every_attempt_and_can_resend(fal, bot, receiver, admin_user):
    receiver.statuses = [410]
    start(bot, fal)
    run_check()
    callback = EventCallback.objects.get()
    callbacks.deliver(callback.pk)
    browser = Client()
    browser.force_login(admin_user)

    page = browser.get(f"/admin/api/eventcallback/{callback.pk}/change/")
    assert page.status_code == 200 and b"HTTP 410" in page.content
    with_resend = browser.post(
        "/admin/api/eventcallback/",
        {"action": "resend", "_selected_action": [callback.pk]},
    )
    assert with_resend.status_code == 302
    assert callbacks.deliver(callback.pk) == CallbackStatus.DELIVERED
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [callback.webhook_id] * 2


def test_the_body_is_compact_json_of_type_timestamp_and_data(fal, bot, receiver):
    start(bot, fal)
    run_check()
    callbacks.deliver(EventCallback.objects.get().pk)

    body = json.loads(receiver.requests[0]["body"])
    assert set(body) == {"type", "timestamp", "data"}
    headers = {k.lower(): v for k, v in receiver.requests[0]["headers"].items()}
    assert headers["content-type"] == "application/json"


def test_the_outcome_hands_its_event_to_the_worker_on_commit(
    fal, bot, receiver, django_capture_on_commit_callbacks
):
    from django_q.models import OrmQ

    start(bot, fal)
    with django_capture_on_commit_callbacks(execute=True):
        run_check()

    callback = EventCallback.objects.get()
    [queued] = [row for row in OrmQ.objects.all() if row.task["func"] == callbacks.TASK]
    assert queued.task["args"] == (callback.pk,)
    # What the worker runs:
    assert callbacks.deliver(*queued.task["args"]) == CallbackStatus.DELIVERED


def test_the_sweep_is_scheduled_every_minute():
    from django_q.models import Schedule

    from monitoring.ops import schedules

    schedules.ensure_schedules()
    sweep = Schedule.objects.get(name=schedules.EVENT_CALLBACK_SWEEP)
    assert (sweep.func, sweep.schedule_type, sweep.minutes) == (
        callbacks.__name__ + ".sweep",
        "I",
        1,
    )


def test_a_revoked_client_is_sent_nothing_more(fal, bot, receiver):
    from monitoring.api.models import ApiClient

    start(bot, fal)
    run_check()
    ApiClient.objects.filter(pk=bot.client.pk).update(revoked_at=timezone.now())

    assert callbacks.deliver(EventCallback.objects.get().pk) == CallbackStatus.REFUSED
    assert receiver.requests == []


def test_finished_callbacks_are_pruned_pending_ones_kept(fal, bot, receiver, settings):
    from monitoring.ops import retention

    settings.RETENTION_API_CALL_DAYS = 30
    for _ in range(2):
        start(bot, fal)
    run_check()
    delivered, pending = EventCallback.objects.order_by("pk")
    callbacks.deliver(delivered.pk)
    EventCallback.objects.update(created_at=timezone.now() - timedelta(days=31))

    assert retention.prune()["api_event_callbacks"] == 1
    assert list(EventCallback.objects.values_list("pk", flat=True)) == [pending.pk]


def test_allowing_private_networks_in_production_is_warned_about(settings):
    from monitoring.api.callbacks import check_callback_networks

    settings.DEBUG = False
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = True
    assert [w.id for w in check_callback_networks()] == ["api.W001"]
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = False
    assert check_callback_networks() == []


# IPv6 forms that carry a private, loopback or link-local IPv4 address (issue 30).
EMBEDDING_PRIVATE_IPV4 = [
    "64:ff9b::a00:1",  # NAT64 well-known prefix → 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 → 169.254.169.254 (cloud metadata)
    "64:ff9b:1::a00:1",  # local-use NAT64 prefix
    "::7f00:1",  # IPv4-compatible → 127.0.0.1
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT) → 127.0.0.1
    "::ffff:7f00:1",  # IPv4-mapped → 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 → 169.254.169.254
    "2002:c0a8:1::1",  # 6to4 → 192.168.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (client 192.0.2.45)
]
EMBEDDING_PUBLIC_IPV4 = ["64:ff9b::808:808", "::ffff:808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE_IPV4)
def test_an_ipv6_form_embedding_a_private_ipv4_is_refused_in_the_url(address, settings):
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = False

    with pytest.raises(callbacks.CallbackRefused, match="not a public address"):
        callbacks.validate_callback_url(f"https://[{address}]/hook")


@pytest.mark.parametrize("address", EMBEDDING_PUBLIC_IPV4)
def test_an_ipv6_form_embedding_a_public_ipv4_is_still_allowed(address, settings):
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = False

    callbacks.validate_callback_url(f"https://[{address}]/hook")


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE_IPV4)
def test_a_dns_answer_embedding_a_private_ipv4_is_refused_at_send_time(
    address, fal, make_api_client, receiver, settings, monkeypatch
):
    import socket

    bot = make_api_client(callback_url="https://hooks.example.com/bot")
    start(bot, fal)
    run_check()
    callback = EventCallback.objects.get()
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = False

    def getaddrinfo(host, port, *args, **kwargs):  # the DNS answer, at the network boundary
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))]

    monkeypatch.setattr(callbacks.socket, "getaddrinfo", getaddrinfo)

    assert callbacks.deliver(callback.pk) == CallbackStatus.REFUSED
    attempt = CallbackAttempt.objects.get()
    assert attempt.outcome == CallbackAttempt.Outcome.REFUSED and attempt.status_code is None
    assert "not a public address" in attempt.error


def test_the_command_and_the_admin_form_refuse_an_embedded_private_ipv4(admin_client, settings):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from monitoring.api.models import ApiClient

    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = False
    url = "https://[64:ff9b::a9fe:a9fe]/latest"

    with pytest.raises(CommandError, match="--callback-url.*not a public address"):
        call_command(
            "create_api_client", "--name", "b", "--scopes", "avatars:read", "--callback-url", url
        )
    response = admin_client.post(
        "/admin/api/apiclient/add/", {"name": "b", "scopes": ["avatars:read"], "callback_url": url}
    )
    assert response.status_code == 200 and b"not a public address" in response.content
    assert not ApiClient.objects.exists()


def test_failing_callbacks_count_on_metrics_and_raise_the_banner_past_the_threshold(
    fal, bot, receiver, settings, admin_client
):
    from django.urls import reverse
    from prometheus_client.parser import text_string_to_metric_families

    settings.METRICS_TOKEN = "scrape-token-0123456789abcdef"
    settings.METRICS_ALLOWED_IPS = []
    settings.EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD = 3

    def failing_on_metrics() -> float:
        page = Client().get(
            "/metrics", headers={"Authorization": f"Bearer {settings.METRICS_TOKEN}"}
        )
        for family in text_string_to_metric_families(page.content.decode()):
            if family.name == "avatar_monitor_event_callbacks_failing":
                return family.samples[0].value
        raise AssertionError("no avatar_monitor_event_callbacks_failing")

    def banner() -> str:
        return admin_client.get(reverse("admin:index")).content.decode()

    receiver.statuses = [503] * 3  # the bot's receiver is down
    for _ in range(3):
        start(bot, fal)
    run_check()
    pending = list(EventCallback.objects.order_by("pk"))
    assert len(pending) == 3 and failing_on_metrics() == 0

    for callback in pending[:2]:
        assert callbacks.deliver(callback.pk) == "retry"
    assert failing_on_metrics() == 2
    assert 'data-problem="callbacks_failing"' not in banner()  # under the threshold

    assert callbacks.deliver(pending[2].pk) == "retry"
    assert failing_on_metrics() == 3
    page = banner()
    assert 'data-problem="callbacks_failing"' in page
    assert "3 event callbacks to the bot are failing" in page
    listed = admin_client.get(reverse("admin:api_eventcallback_changelist") + "?failing=yes")
    assert len(listed.context["cl"].result_list) == 3

    for callback in pending:  # the receiver is back: each retry is delivered
        make_due(callback)
        assert callbacks.deliver(callback.pk) == "delivered"
    assert failing_on_metrics() == 0
    assert 'data-problem="callbacks_failing"' not in banner()
