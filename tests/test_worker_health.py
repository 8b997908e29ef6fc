"""The notification side is watched: notifications_late in /healthz, the dashboard and the HEALTHCHECK."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from monitoring import transitions
from monitoring.models import CheckRun, EventSource
from notifications.models import Notification, NotificationStatus, SenderState

pytestmark = pytest.mark.django_db


@pytest.fixture
def short_interval(settings):
    settings.CHECK_INTERVAL_SECONDS = 10  # notifications late after 20 s
    CheckRun.objects.create(started_at=timezone.now())  # the periodic check is fine
    return settings


@pytest.fixture
def completed_message(training_avatar):
    """An owner's "ready" message in the outbox, as the completion wrote it."""
    _avatar, training = training_avatar(request_id="req-late")
    transitions.complete(training, lora_url="https://v3.fal.media/l", source=EventSource.WEBHOOK)
    return Notification.objects.get()


def due_since(notification: Notification, seconds: float) -> None:
    Notification.objects.filter(pk=notification.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_a_message_due_for_longer_than_two_intervals_makes_healthz_report_late(
    client, short_interval, completed_message, settings
):
    due_since(completed_message, 25)
    settings.HEALTHZ_TOKEN = "health-token"

    body = client.get("/healthz", headers={"Authorization": "Bearer health-token"}).json()
    strict = client.get("/healthz?strict=1")

    assert body["notifications_late"] is True
    assert body["notifications_late_after_seconds"] == 20
    assert body["ok"] is True  # only strict fails on it
    assert strict.status_code == 503 and strict.json()["notifications_late"] is True


def test_a_message_due_for_less_than_two_intervals_is_not_late(
    client, short_interval, completed_message
):
    due_since(completed_message, 15)

    response = client.get("/healthz?strict=1")

    assert response.status_code == 200
    assert response.json()["notifications_late"] is False


def test_a_message_claimed_by_a_worker_whose_lease_ran_out_long_ago_is_late(
    client, short_interval, completed_message
):
    long_ago = timezone.now() - timedelta(seconds=40)
    Notification.objects.filter(pk=completed_message.pk).update(
        status=NotificationStatus.SENDING, lease_until=long_ago, next_attempt_at=long_ago
    )

    assert client.get("/healthz").json()["notifications_late"] is True


def test_a_message_being_sent_under_a_live_lease_is_not_late(
    client, short_interval, completed_message
):
    Notification.objects.filter(pk=completed_message.pk).update(
        status=NotificationStatus.SENDING,
        lease_until=timezone.now() + timedelta(seconds=60),
        next_attempt_at=timezone.now() - timedelta(seconds=40),
    )

    assert client.get("/healthz").json()["notifications_late"] is False


def test_nothing_is_late_while_sending_is_paused_because_the_token_is_rejected(
    client, short_interval, completed_message, settings
):
    due_since(completed_message, 300)
    SenderState.objects.create(pk=1, paused=True, reason="401 Unauthorized")
    settings.HEALTHZ_TOKEN = "health-token"

    body = client.get("/healthz?strict=1", headers={"Authorization": "Bearer health-token"}).json()

    assert body["notifications_paused"] is True
    assert body["notifications_late"] is False


def test_notifications_late_is_public_and_the_heartbeat_age_needs_the_token(
    client, short_interval, settings
):
    settings.HEALTHZ_TOKEN = "health-token"
    public = client.get("/healthz").json()
    assert public["notifications_late"] is False
    assert "notifications_heartbeat_age_seconds" not in public

    body = client.get("/healthz", headers={"Authorization": "Bearer health-token"}).json()
    assert body["notifications_heartbeat_age_seconds"] is None  # never ran


def test_the_workers_healthcheck_fails_while_notifications_are_late(
    short_interval, completed_message
):
    due_since(completed_message, 25)

    with pytest.raises(CommandError, match="1 notification\\(s\\) due for more than 20 s"):
        call_command("check_worker_heartbeat")

    due_since(completed_message, 5)
    call_command("check_worker_heartbeat")


def test_the_dashboard_says_notifications_are_late(admin_client, short_interval, completed_message):
    due_since(completed_message, 25)

    page = admin_client.get("/admin/monitoring/avatar/dashboard/").content.decode()

    assert 'id="notifications-late"' in page
    assert "LATE: 1 message due for more than 20 s" in page


def test_the_checks_role_logs_a_warning_while_notifications_are_late(
    short_interval, completed_message, caplog
):
    from monitoring.worker import cluster

    due_since(completed_message, 25)
    with caplog.at_level("WARNING", logger="monitoring.worker"):
        cluster._warn_if_notifications_late()

    assert "Notifications are late: 1 message(s) due for more than 20 s" in caplog.text
