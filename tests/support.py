"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

from monitoring.models import Avatar, AvatarEvent, Training
from notifications.models import Notification
from tests.worker_process import database_url

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK_URL = "/webhooks/fal/"


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
