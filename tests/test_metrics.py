"""GET /metrics, scraped and parsed as Prometheus would, over a known set of trainings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fakes.fal_signing import delivery_body, lora_payload
from monitoring import tasks, transitions
from monitoring.models import CheckRun, EventSource, FalStatus, Training, WebhookDelivery
from monitoring.ops import retention
from monitoring.trainings import start_training
from notifications import delivery
from notifications.models import Notification
from tests.support import METRICS_TOKEN as TOKEN
from tests.support import metric_value as value
from tests.support import scrape_metrics as scrape

pytestmark = pytest.mark.django_db
LONG_AGO = timezone.now() - timedelta(days=400)


def test_it_reports_the_trainings_avatars_heartbeat_and_backlog_as_they_are(
    client, metrics_on, make_avatar, training_avatar, django_assert_max_num_queries
):
    make_avatar(ready=False)  # a draft
    make_avatar()  # ready for training
    _queued, queued = training_avatar("req-q1")
    _stuck, stuck = training_avatar("req-q2")
    transitions.flag_stuck(stuck, reason="an hour in the queue")
    _running, running = training_avatar("req-run")
    transitions.record_fal_status(
        running, fal_status=FalStatus.IN_PROGRESS, source=EventSource.CHECK
    )
    _done, done = training_avatar("req-done")
    transitions.complete(
        done, lora_url="https://v3.fal.media/l.safetensors", source=EventSource.CHECK
    )
    now = timezone.now()
    CheckRun.objects.create(
        kind=CheckRun.Kind.SCHEDULED,
        started_at=now - timedelta(seconds=90),
        finished_at=now - timedelta(seconds=87),
        duration_seconds=2.5,
    )
    # A manual run proves nothing about the worker: it does not count as the heartbeat.
    CheckRun.objects.create(kind=CheckRun.Kind.MANUAL, started_at=now, duration_seconds=9.0)
    # The owner's "ready" message, due for two minutes and not sent yet; the staff's
    # stuck alert waits for company and is not due yet.
    Notification.objects.filter(training=done).update(next_attempt_at=now - timedelta(minutes=2))
    Notification.objects.filter(training=stuck).update(next_attempt_at=now + timedelta(minutes=1))

    with django_assert_max_num_queries(10):
        samples = scrape(client)

    assert value(samples, "avatar_monitor_trainings_active", fal_status="IN_QUEUE") == 2
    assert value(samples, "avatar_monitor_trainings_active", fal_status="IN_PROGRESS") == 1
    assert value(samples, "avatar_monitor_trainings_active", fal_status="SUBMITTING") == 0
    assert value(samples, "avatar_monitor_trainings_stuck") == 1
    assert value(samples, "avatar_monitor_avatars", status="training") == 3
    assert value(samples, "avatar_monitor_avatars", status="completed") == 1
    assert value(samples, "avatar_monitor_avatars", status="draft") == 1
    assert value(samples, "avatar_monitor_avatars", status="ready_for_training") == 1
    assert value(samples, "avatar_monitor_avatars", status="error") == 0
    assert 90 <= value(samples, "avatar_monitor_check_run_age_seconds") < 120
    assert value(samples, "avatar_monitor_check_run_duration_seconds") == 2.5
    assert value(samples, "avatar_monitor_notifications_backlog") == 2
    assert 120 <= value(samples, "avatar_monitor_notifications_oldest_due_seconds") < 150
    assert value(samples, "avatar_monitor_notifications_paused") == 0
    # Every counter is there from the first scrape, at zero.
    assert value(samples, "avatar_monitor_fal_errors_total", **{"class": "FalTransient"}) == 0
    assert (
        value(
            samples, "avatar_monitor_webhook_deliveries_total", verdict="valid", outcome="applied"
        )
        == 0
    )
    assert value(samples, "avatar_monitor_notification_sends_total", result="sent") == 0


def test_a_worker_that_never_ran_shows_an_infinite_age(client, metrics_on):
    samples = scrape(client)
    assert value(samples, "avatar_monitor_check_run_age_seconds") == float("inf")
    assert value(samples, "avatar_monitor_notifications_oldest_due_seconds") == 0


def test_counters_count_deliveries_and_sends_and_never_drop_after_prune(
    client, metrics_on, fal, deliver, training_avatar, run_deliveries
):
    _avatar, _training = training_avatar("req-hook")
    body = delivery_body("req-hook", payload=lora_payload("req-hook"))
    headers = fal.signer.headers(body, "req-hook")
    assert deliver(body, headers=headers).status_code == 200
    assert deliver(body, headers=headers).status_code == 200  # the same delivery again: a replay
    assert deliver(body + b" ", headers=headers).status_code == 401  # not what was signed
    run_deliveries()  # the owner's "ready" message, through the locmem backend

    before = scrape(client)
    deliveries = "avatar_monitor_webhook_deliveries_total"
    assert value(before, deliveries, verdict="valid", outcome="applied") == 1
    assert value(before, deliveries, verdict="valid", outcome="replay") == 1
    assert value(before, deliveries, verdict="bad_signature", outcome="rejected") == 1
    assert value(before, "avatar_monitor_notification_sends_total", result="sent") == 1

    # Retention removes the rows the counters came from; the counters stay.
    WebhookDelivery.objects.update(received_at=LONG_AGO)
    assert retention.prune()["webhook_deliveries"] == 3
    after = scrape(client)
    for name in (deliveries, "avatar_monitor_notification_sends_total"):
        for key, number in before.items():
            if key[0] == name:
                assert after[key] == number, key


def test_fal_errors_are_counted_by_class_once_per_failed_check(
    client, metrics_on, fal, make_avatar, settings
):
    settings.FAL_CALL_TIMEOUT_SECONDS = 10.0  # a slow machine must not turn 404 into a timeout
    fal.script(queue_seconds=600)
    outcome = start_training(make_avatar(), source=EventSource.COMMAND)
    request_id = outcome.training.fal_request_id
    fal.script(request_id, status_error=500)  # not retried by fal-client: one error each
    for _ in range(2):
        Training.objects.update(next_check_at=timezone.now() - timedelta(seconds=1))
        tasks.run_check()
    fal.script(request_id, status_error=404)
    Training.objects.update(next_check_at=timezone.now() - timedelta(seconds=1))
    tasks.run_check()

    samples = scrape(client)
    assert value(samples, "avatar_monitor_fal_errors_total", **{"class": "FalTransient"}) == 2
    assert value(samples, "avatar_monitor_fal_errors_total", **{"class": "FalNotFound"}) == 1
    assert value(samples, "avatar_monitor_fal_errors_total", **{"class": "FalAuthError"}) == 0


def test_sending_paused_shows_in_the_metrics(client, metrics_on):
    from notifications.models import SenderState

    SenderState.get()
    SenderState.objects.filter(pk=1).update(paused=True, reason="401 Unauthorized")
    assert delivery.sending_paused()[0]
    assert value(scrape(client), "avatar_monitor_notifications_paused") == 1


# --- who may scrape ---------------------------------------------------------------------


def test_without_configuration_the_endpoint_does_not_exist(client, settings):
    settings.METRICS_TOKEN = None
    settings.METRICS_ALLOWED_IPS = []
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x"]
)
def test_with_a_token_set_anything_but_that_bearer_token_answers_401(
    client, metrics_on, authorization
):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token" in response.json()["error"]
    assert TOKEN not in response.content.decode()


def test_the_allow_list_sees_the_client_behind_the_proxy_by_the_one_rule(client, settings):
    import ipaddress

    settings.METRICS_TOKEN = None
    settings.METRICS_ALLOWED_IPS = [ipaddress.ip_network("203.0.113.0/24")]
    settings.FORWARDED_ALLOW_IPS = [ipaddress.ip_network("127.0.0.1/32")]

    # Through our proxy: the client is the last X-Forwarded-For hop.
    allowed = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert allowed.status_code == 200
    # A first hop chosen by the client is not believed.
    spoofed = client.get(
        "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.7"
    )
    assert spoofed.status_code == 403
    # Not through the proxy: X-Forwarded-For is ignored altogether.
    direct = client.get("/metrics", REMOTE_ADDR="198.51.100.7", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert direct.status_code == 403

    # With a token as well, both apply.
    settings.METRICS_TOKEN = TOKEN
    no_token = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert no_token.status_code == 401


def test_prometheus_scrapes_over_plain_http_without_a_redirect(settings, metrics_on):
    from django.test import Client

    settings.SECURE_SSL_REDIRECT = True
    client = Client()  # a fresh handler: the security middleware reads the setting
    assert client.get("/admin/login/").status_code == 301
    assert scrape(client)[("avatar_monitor_trainings_stuck", ())] == 0
