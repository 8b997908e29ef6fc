"""The service-level figures on /metrics: how long owners wait, how trainings finish.

Each test drives the real path (a signed webhook, a periodic check against the fal
emulator, a send through the locmem Bot API backend) and reads the figures the way
Prometheus does, from the scraped text.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from monitoring import tasks, transitions
from monitoring.fal import signature
from monitoring.models import (
    CheckRun,
    EventSource,
    Training,
    WebhookDelivery,
    WorkerHeartbeat,
)
from monitoring.ops import health, retention
from monitoring.trainings import start_training
from monitoring.worker import cluster
from notifications.models import Notification
from tests.support import metric_value as value
from tests.support import scrape_metrics as scrape

pytestmark = pytest.mark.django_db
PORTRAIT = "fal-ai/flux-lora-portrait-trainer"
STYLE = "fal-ai/flux-lora-fast-training"


@pytest.fixture(autouse=True)
def patient_fal_calls(metrics_on, settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 10.0


def buckets(samples, name: str, **labels) -> dict[str, float]:
    """A histogram's cumulative buckets {le: count}."""
    wanted = tuple(sorted(labels.items()))
    return {
        dict(key)["le"]: number
        for (sample, key), number in samples.items()
        if sample == f"{name}_bucket" and tuple(p for p in key if p[0] != "le") == wanted
    }


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """A block whose on-commit work runs at its end, as the commit would run it (the
    figures of a finish are counted once it is committed)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def due_now() -> None:
    Training.objects.update(next_check_at=timezone.now() - timedelta(seconds=1))


def post_webhook(client, body: bytes, headers: dict):
    return client.post(
        "/webhooks/fal/",
        data=body,
        content_type="application/json",
        headers=headers,
    )


def test_owners_told_is_measured_from_the_time_fal_signed_its_webhook(
    client, fal, make_avatar, run_deliveries, committed
):
    fal.drop_webhooks()
    fal.script(run_seconds=3600)
    training = start_training(make_avatar(), source=EventSource.COMMAND).training
    fal.finish(training.fal_request_id)
    # fal finished the job and signed its webhook 100 s before it reached us.
    body, headers = fal.webhook_for(training.fal_request_id, timestamp=int(time.time()) - 100)
    with committed():
        assert post_webhook(client, body, headers).status_code == 200
    run_deliveries()  # the owner's "ready" message goes out now

    samples = scrape(client)
    told = buckets(samples, "avatar_monitor_owner_told_seconds", kind="ready")
    assert told["90.0"] == 0 and told["120.0"] == 1 and told["+Inf"] == 1
    assert value(samples, "avatar_monitor_owner_told_seconds_count", kind="ready") == 1
    assert 100 <= value(samples, "avatar_monitor_owner_told_seconds_sum", kind="ready") < 120
    assert (
        value(samples, "avatar_monitor_finishes_total", learned_by="webhook", outcome="completed")
        == 1
    )
    assert value(samples, "avatar_monitor_time_to_ready_seconds_count", trainer=PORTRAIT) == 1
    # Nobody else was told anything.
    assert value(samples, "avatar_monitor_owner_told_seconds_count", kind="failed") == 0


def test_a_webhook_signed_before_the_check_learned_it_starts_the_owners_wait(
    client, fal, make_avatar, run_deliveries, committed
):
    fal.drop_webhooks()
    fal.script(run_seconds=3600)
    training = start_training(make_avatar(), source=EventSource.COMMAND).training
    fal.finish(training.fal_request_id)
    due_now()
    with committed():
        tasks.run_check()  # the check learns it first...
    # ...and fal's webhook, signed 100 s ago, turns up before the message is sent.
    body, headers = fal.webhook_for(training.fal_request_id, timestamp=int(time.time()) - 100)
    assert post_webhook(client, body, headers).status_code == 200
    run_deliveries()

    samples = scrape(client)
    told = buckets(samples, "avatar_monitor_owner_told_seconds", kind="ready")
    assert told["90.0"] == 0 and told["120.0"] == 1
    assert (
        value(samples, "avatar_monitor_finishes_total", learned_by="check", outcome="completed")
        == 1
    )


def test_a_finish_learned_by_the_check_counts_as_check_with_its_queue_time_and_time_to_ready(
    client, fal, make_avatar, run_deliveries, committed
):
    fal.drop_webhooks()
    fal.script(run_seconds=3600)
    training = start_training(make_avatar(), source=EventSource.COMMAND).training
    # Submitted 250 s ago and started 1,000 s ago, as far as our rows say.
    Training.objects.filter(pk=training.pk).update(
        submitted_at=timezone.now() - timedelta(seconds=250),
        created_at=timezone.now() - timedelta(seconds=1000),
    )
    due_now()
    tasks.run_check()  # sees the job running: it waited ~250 s in fal's queue
    assert Training.objects.get(pk=training.pk).started_at is not None

    fal.finish(training.fal_request_id)
    due_now()
    with committed():
        tasks.run_check()  # learns the completion: no webhook came
    run_deliveries()

    samples = scrape(client)
    queued = buckets(samples, "avatar_monitor_fal_queue_seconds", trainer=PORTRAIT)
    assert queued["120.0"] == 0 and queued["300.0"] == 1
    ready = buckets(samples, "avatar_monitor_time_to_ready_seconds", trainer=PORTRAIT)
    assert ready["900.0"] == 0 and ready["1200.0"] == 1
    assert (
        value(samples, "avatar_monitor_finishes_total", learned_by="check", outcome="completed")
        == 1
    )
    assert (
        value(samples, "avatar_monitor_finishes_total", learned_by="webhook", outcome="completed")
        == 0
    )
    # Without fal's own time, the owner's wait starts when the check learned it.
    told = buckets(samples, "avatar_monitor_owner_told_seconds", kind="ready")
    assert told["60.0"] == 1


def test_fal_records_end_time_starts_the_owners_wait_and_a_failure_counts_by_kind(
    client, training_avatar, run_deliveries, committed
):
    _avatar, training = training_avatar("req-record")
    with committed():
        transitions.finish_failed(
            training,
            error_message="Training failed",
            error_type="internal_error",
            source=EventSource.FAL_RECORD,
            fal_finished_at=timezone.now() - timedelta(seconds=700),
        )
    run_deliveries()

    samples = scrape(client)
    told = buckets(samples, "avatar_monitor_owner_told_seconds", kind="failed")
    assert told["600.0"] == 0 and told["1800.0"] == 1
    assert (
        value(samples, "avatar_monitor_finishes_total", learned_by="fal_record", outcome="error")
        == 1
    )
    # A failure is no "time to ready".
    assert value(samples, "avatar_monitor_time_to_ready_seconds_count", trainer=PORTRAIT) == 0


def test_a_message_that_is_not_sent_is_not_counted_as_told(client, training_avatar, committed):
    _avatar, training = training_avatar("req-unsent")
    with committed():
        transitions.complete(
            training, lora_url="https://v3.fal.media/l.safetensors", source="check"
        )
    assert Notification.objects.filter(training=training).exists()  # waiting in the outbox

    samples = scrape(client)
    assert value(samples, "avatar_monitor_owner_told_seconds_count", kind="ready") == 0
    assert value(samples, "avatar_monitor_time_to_ready_seconds_count", trainer=PORTRAIT) == 1


def test_an_unknown_trainer_is_shown_as_other_and_prune_lowers_no_histogram(
    client, training_avatar, run_deliveries, committed
):
    _avatar, training = training_avatar("req-elsewhere")
    Training.objects.filter(pk=training.pk).update(endpoint="someone/else-trainer")
    training.refresh_from_db()
    with committed():
        transitions.complete(
            training, lora_url="https://v3.fal.media/l.safetensors", source="check"
        )
    run_deliveries()

    before = scrape(client)
    assert value(before, "avatar_monitor_time_to_ready_seconds_count", trainer="other") == 1
    trainers = {
        dict(key).get("trainer")
        for name, key in before
        if name.startswith("avatar_monitor_time_to_ready_seconds")
    }
    assert trainers == {PORTRAIT, STYLE, "other"}

    long_ago = timezone.now() - timedelta(days=400)
    Notification.objects.update(created_at=long_ago, sent_at=long_ago)
    WebhookDelivery.objects.update(received_at=long_ago)
    retention.prune()
    after = scrape(client)
    for key, number in before.items():
        if key[0].startswith(("avatar_monitor_owner_told", "avatar_monitor_time_to_ready")):
            assert after[key] == number, key


def test_heartbeats_per_role_error_ratio_and_thresholds_are_exported(
    client, settings, django_assert_max_num_queries
):
    settings.CHECK_INTERVAL_SECONDS = 60
    settings.WORKER_HEARTBEAT_LATE_SECONDS = 45
    settings.OWNER_TOLD_OBJECTIVE_SECONDS = 90
    settings.STUCK_TRAININGS_ALERT_THRESHOLD = 7
    settings.FAL_OUTAGE_ERROR_SHARE = 0.4
    settings.WEBHOOK_REFUSALS_ALERT_PER_MINUTE = 12.5
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        role="checks", host="a", pid=1, beat_at=now - timedelta(seconds=5)
    )
    WorkerHeartbeat.objects.create(role="checks", host="b", pid=2, beat_at=now - timedelta(hours=1))
    CheckRun.objects.create(
        started_at=now - timedelta(seconds=30),
        finished_at=now - timedelta(seconds=25),
        duration_seconds=5.0,
        checked=40,
        errors=30,
    )

    with django_assert_max_num_queries(10):
        samples = scrape(client)

    # The newest beat of any host counts; a role that never ran is infinitely late.
    assert 5 <= value(samples, "avatar_monitor_worker_heartbeat_age_seconds", role="checks") < 30
    assert math.isinf(
        value(samples, "avatar_monitor_worker_heartbeat_age_seconds", role="notifications")
    )
    assert value(samples, "avatar_monitor_fal_error_ratio") == 0.75
    assert value(samples, "avatar_monitor_check_run_late_after_seconds") == 180
    assert value(samples, "avatar_monitor_notifications_late_after_seconds") == 120
    assert value(samples, "avatar_monitor_worker_heartbeat_late_after_seconds") == 45
    assert value(samples, "avatar_monitor_owner_told_objective_seconds") == 90
    assert value(samples, "avatar_monitor_trainings_stuck_threshold") == 7
    assert value(samples, "avatar_monitor_fal_error_ratio_threshold") == 0.4
    assert value(samples, "avatar_monitor_webhook_refusals_per_minute_threshold") == 12.5


def test_the_health_module_knows_every_worker_role():
    assert health.WORKER_ROLES == cluster.ROLES


def test_the_models_timestamp_header_is_the_one_webhooks_verify():
    from monitoring.models import WEBHOOK_TIMESTAMP_HEADER

    assert WEBHOOK_TIMESTAMP_HEADER == signature.TIMESTAMP_HEADER
