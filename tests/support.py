"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from monitoring import tasks, transitions
from monitoring.models import Avatar, AvatarEvent, CheckRun, EventSource, Training
from notifications.models import Notification
from tests.worker_process import database_url

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK_URL = "/webhooks/fal/"
METRICS_TOKEN = "scrape-token-0123456789abcdef"  # what the ``metrics_on`` fixture sets


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, log: Path | None = None, *, every: float = 0.25):
    """Poll ``predicate`` every ``every`` seconds until it is truthy; its value.

    On timeout, fails saying what was awaited, with the tail of ``log`` (a process's
    output) when given.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}".rstrip())


def start_bin_run(
    env: dict[str, str], **popen
) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """``./bin/run`` in ``env``: the process, the list its output lines are added to as
    they come, and the thread that reads them (join it once the process has ended)."""
    process = subprocess.Popen(
        ["bash", "bin/run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    return process, output, reader


def fetch(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError:
        return None


def queued_monitoring_tasks():
    from django_q.models import OrmQ

    return list(OrmQ.objects.exclude(key=settings.NOTIFICATION_CLUSTER).order_by("id"))


def run_queued_monitoring_tasks() -> list:
    """Run what the admin queued, the way a worker would (without its scheduler)."""
    results = []
    for package in queued_monitoring_tasks():
        task = package.task
        package.delete()
        results.append(import_string(task["func"])(*task["args"], **task["kwargs"]))
    return results


def make_due(*trainings: Training) -> None:
    """Make ``trainings`` (all of them when none is named) due for the next check."""
    ids = [t.pk for t in trainings] or list(Training.objects.values_list("pk", flat=True))
    Training.objects.filter(pk__in=ids).update(next_check_at=timezone.now() - timedelta(seconds=1))


def check_run(kind: str = CheckRun.Kind.SCHEDULED) -> CheckRun:
    """Run the periodic check now; its record."""
    return CheckRun.objects.get(pk=tasks.run_check(kind))


def complete_training(training: Training, source: str = EventSource.CHECK):
    """Complete ``training`` the way a check or a webhook does; the transition's outcome."""
    return transitions.complete(
        training, lora_url="https://v3.fal.media/files/lora.safetensors", source=source
    )


def owner_messages(avatar: Avatar) -> list[str]:
    """The kinds of the messages to ``avatar``'s owner, in the outbox."""
    return list(
        Notification.objects.filter(avatar=avatar, audience="owner").values_list("kind", flat=True)
    )


def scrape_metrics(client, **headers) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get(
        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}", **headers}
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def snapshot() -> tuple:
    """Everything a delivery could change about avatars and messages."""
    return (
        sorted(Avatar.objects.values_list("pk", "status")),
        sorted(Training.objects.values_list("pk", "finished_at", "lora_url", "next_check_at")),
        AvatarEvent.objects.count(),
        Notification.objects.count(),
    )


def managepy(*args: str, database: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    if database:
        env["DATABASE_URL"] = database_url()
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def user_shell(tmp_path: Path) -> dict[str, str]:
    """A user's shell for ``./bin/run``: no fal key (so the demo starts), nothing of the
    tests' environment, its state and SQLite database under ``tmp_path``."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "LANG": "C.UTF-8",
        "STATE_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
    }
