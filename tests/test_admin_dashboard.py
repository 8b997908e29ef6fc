"""The staff dashboard: counts, stuck trainings, heartbeat, fal errors, the chart, the backlog."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from monitoring import transitions
from monitoring.models import CheckRun, EventSource, Training
from monitoring.ops import dashboard

DASHBOARD = reverse("admin:monitoring_dashboard")


@pytest.fixture
def finished_trainings(training_avatar):
    """Two completed trainings (20 and 40 minutes) and one failure, all in the last hours."""
    now = timezone.now()
    for n, minutes in enumerate((20, 40)):
        _a, training = training_avatar(request_id=f"req-ok-{n}", name=f"Done {n}")
        transitions.complete(
            training, lora_url="https://v3.fal.media/x.safetensors", source=EventSource.CHECK
        )
        Training.objects.filter(pk=training.pk).update(
            submitted_at=now - timedelta(minutes=minutes), finished_at=now
        )
    _a, failed = training_avatar(request_id="req-bad", name="Broken")
    transitions.fail(failed, error_message="bad photos", source=EventSource.CHECK)


def test_it_needs_a_staff_login(client):
    response = client.get(DASHBOARD)

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_it_shows_counts_stuck_trainings_and_a_fresh_heartbeat(
    admin_client, training_avatar, settings
):
    settings.CHECK_INTERVAL_SECONDS = 60
    CheckRun.objects.create(
        started_at=timezone.now() - timedelta(seconds=20),
        duration_seconds=0.75,
        checked=12,
        due=12,
    )
    _avatar, training = training_avatar(request_id="req-stuck", name="Stuck here")
    transitions.flag_stuck(training, reason="in queue for 3 hours")

    response = admin_client.get(DASHBOARD)
    page = response.content.decode()

    assert response.status_code == 200
    assert "Stuck here" in page and "in queue for 3 hours" in page
    assert 'class="dash-card dash-ok" id="heartbeat"' in page
    assert "0.75 s" in page and "12 / due 12" in page
    training_row = [row for row in response.context["status_counts"] if row[0] == "training"]
    assert training_row[0][2] == 1


def test_a_late_heartbeat_is_red(admin_client, settings):
    settings.CHECK_INTERVAL_SECONDS = 60
    CheckRun.objects.create(started_at=timezone.now() - timedelta(minutes=10))

    page = admin_client.get(DASHBOARD).content.decode()

    assert 'class="dash-card dash-late" id="heartbeat"' in page
    assert "LATE" in page


def test_no_heartbeat_at_all_says_so(admin_client):
    assert "NEVER RAN" in admin_client.get(DASHBOARD).content.decode()


def test_fal_error_rate_covers_the_last_hour_only(db):
    now = timezone.now()
    CheckRun.objects.create(started_at=now - timedelta(minutes=10), checked=60, errors=10)
    CheckRun.objects.create(started_at=now - timedelta(minutes=50), checked=40, errors=0)
    CheckRun.objects.create(started_at=now - timedelta(hours=3), checked=50, errors=50)

    rate = dashboard.fal_error_rate(now)

    assert rate == {"runs": 2, "checked": 100, "errors": 10, "percent": 10.0}


def test_trainings_finished_per_hour_count_outcomes_and_mean_durations(finished_trainings):
    buckets = dashboard.finished_per_hour(timezone.now())

    assert len(buckets) == 24
    last = buckets[-1]
    assert (last.completed, last.failed, last.cancelled) == (2, 1, 0)
    assert last.average_minutes == pytest.approx(30, abs=0.5)
    assert sum(b.total for b in buckets[:-1]) == 0


def test_the_chart_is_inline_svg_with_no_outside_resources(admin_client, finished_trainings):
    page = admin_client.get(DASHBOARD).content.decode()

    assert "<svg" in page and "<rect" in page
    assert "Finished in the last 24 hours: 3" in page
    assert "mean training time 30.0 min" in page
    assert "cdn" not in page.lower() and '<script src="http' not in page


def test_the_notification_backlog_counts_waiting_and_failed_messages(
    admin_client, finished_trainings
):
    from notifications.models import Notification

    Notification.objects.filter(kind="failed").update(status="given_up")

    backlog = dashboard.notification_backlog(timezone.now())
    page = admin_client.get(DASHBOARD).content.decode()

    assert backlog["pending"] == 2 and backlog["problems"] == 1
    assert "1 owner not told how their training ended" in page
