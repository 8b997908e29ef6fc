"""GET /healthz and the worker's heartbeat command, with fresh, stale and missing heartbeats."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone

from monitoring import transitions
from monitoring.models import CheckRun
from tests.worker_process import database_url

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


def beat(seconds_ago: float, kind: str = CheckRun.Kind.SCHEDULED) -> CheckRun:
    started = timezone.now() - timedelta(seconds=seconds_ago)
    return CheckRun.objects.create(
        kind=kind,
        started_at=started,
        finished_at=started + timedelta(seconds=1),
        duration_seconds=1.0,
        checked=3,
    )


@pytest.fixture
def short_interval(settings):
    settings.CHECK_INTERVAL_SECONDS = 10  # late after 30 s
    settings.HEALTHZ_TOKEN = "healthz-test-token"
    return settings


# The figures (counts, ages) are for monitoring with the token, or staff.
FIGURES = {"HTTP_AUTHORIZATION": "Bearer healthz-test-token"}


def test_it_answers_200_with_the_figures_when_the_heartbeat_is_fresh(
    client, short_interval, training_avatar
):
    beat(5)
    _avatar, training = training_avatar(request_id="req-h1")
    training_avatar(request_id="req-h2")
    transitions.flag_stuck(training, reason="queued too long")

    response = client.get("/healthz", **FIGURES)
    body = response.json()

    assert response.status_code == 200
    assert body["ok"] is True and body["database"] is True
    assert body["check_late"] is False
    assert 4 <= body["last_check_age_seconds"] < 30
    assert body["active_trainings"] == 2
    assert body["stuck_trainings"] == 1
    assert body["notifications_paused"] is False


def test_a_stale_heartbeat_is_reported_but_only_strict_answers_503(client, short_interval):
    beat(45)

    relaxed = client.get("/healthz")
    strict = client.get("/healthz?strict=1")

    assert relaxed.status_code == 200 and relaxed.json()["check_late"] is True
    assert strict.status_code == 503
    assert strict.json()["ok"] is False and strict.json()["check_late"] is True


def test_strict_answers_200_while_the_heartbeat_is_fresh(client, short_interval):
    beat(25)

    assert client.get("/healthz?strict=1").status_code == 200


def test_a_manual_run_does_not_count_as_the_workers_heartbeat(client, short_interval):
    beat(120)
    beat(1, kind=CheckRun.Kind.MANUAL)

    assert client.get("/healthz?strict=1").status_code == 503


def test_no_run_at_all_is_late(client, short_interval):
    body = client.get("/healthz", **FIGURES).json()

    assert body["check_late"] is True and body["last_check_age_seconds"] is None


def test_sending_paused_is_reported(client, short_interval):
    delivery = pytest.importorskip("notifications.delivery")
    from notifications.models import SenderState

    beat(1)
    SenderState.objects.update_or_create(pk=1, defaults={"paused": True, "reason": "InvalidToken"})

    assert delivery.sending_paused() == (True, "InvalidToken")
    assert client.get("/healthz", **FIGURES).json()["notifications_paused"] is True


@pytest.mark.postgres  # points the connection at a closed port
@pytest.mark.django_db(transaction=True)
def test_it_answers_503_when_the_database_does_not_answer(client):
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict["HOST"], connection.settings_dict["PORT"] = "127.0.0.1", "1"
    try:
        response = client.get("/healthz")
    finally:
        connection.close()
        connection.settings_dict.update(saved)

    assert response.status_code == 503
    assert response.json() == {"ok": False, "database": False, "error": "database unreachable"}


def test_only_get_and_head_are_allowed(client):
    assert client.post("/healthz").status_code == 405
    assert client.put("/healthz").status_code == 405


def test_head_answers_like_get_without_a_body(client, short_interval):
    beat(5)

    response = client.head("/healthz?strict=1")

    assert response.status_code == 200
    assert response.content == b""


def test_without_credentials_it_says_only_whether_things_are_ok(
    client, short_interval, training_avatar
):
    beat(45)
    training_avatar(request_id="req-secret-count")

    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong-token"}):
        body = client.get("/healthz", **headers).json()
        assert set(body) <= {"ok", "database", "check_late", "notifications_late"}
        assert body["database"] is True and body["check_late"] is True


def test_a_staff_session_sees_the_figures(client, short_interval, django_user_model):
    beat(5)
    client.force_login(django_user_model.objects.create_user("staff", is_staff=True))

    body = client.get("/healthz").json()

    assert body["active_trainings"] == 0 and "last_check_age_seconds" in body


def test_no_token_configured_means_no_bearer_gets_the_figures(client, settings):
    settings.HEALTHZ_TOKEN = None

    body = client.get("/healthz", HTTP_AUTHORIZATION="Bearer ").json()

    assert "active_trainings" not in body


# --- check_worker_heartbeat ------------------------------------------------------------


def test_the_heartbeat_command_passes_with_a_fresh_run(short_interval, capsys):
    beat(3)

    call_command("check_worker_heartbeat")

    assert "ok: the last periodic check started 3 s ago" in capsys.readouterr().out


def test_the_heartbeat_command_fails_with_a_stale_run(short_interval):
    beat(31)

    with pytest.raises(CommandError, match=r"started 3\d s ago \(limit 30 s\)"):
        call_command("check_worker_heartbeat")


def test_the_heartbeat_command_fails_when_nothing_ever_ran(short_interval):
    with pytest.raises(CommandError, match="no periodic check has run yet"):
        call_command("check_worker_heartbeat")


def test_the_heartbeat_command_takes_its_own_limit(short_interval):
    beat(20)

    with pytest.raises(CommandError, match="limit 15 s"):
        call_command("check_worker_heartbeat", "--max-age", "15")
    with pytest.raises(CommandError, match="out of range"):
        call_command("check_worker_heartbeat", "--max-age", "0")
    call_command("check_worker_heartbeat", "--max-age", "60")


def _run_heartbeat_command() -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "CHECK_INTERVAL_SECONDS": "10",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check_worker_heartbeat"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db(transaction=True)
def test_the_container_healthcheck_gets_a_real_exit_code():
    CheckRun.objects.all().delete()
    stale = beat(300)
    failing = _run_heartbeat_command()
    stale.delete()
    beat(2)
    passing = _run_heartbeat_command()

    assert failing.returncode == 1, failing.stderr
    assert "unhealthy" in failing.stderr
    assert passing.returncode == 0, passing.stderr
    assert passing.stdout.startswith("ok:")
