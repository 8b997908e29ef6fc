"""A real ``manage.py qcluster`` subprocess against the test database (smoke tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """DATABASE_URL for a subprocess that must see this run's test database."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def start_qcluster(log: Path, *args: str, **extra_env: str) -> subprocess.Popen:
    """``python manage.py qcluster ARGS`` on the test database, in its own process group."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "qcluster", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextmanager
def qcluster(log: Path, *args: str, **extra_env: str) -> Iterator[subprocess.Popen]:
    """Run the worker on the test database (the test must commit: transaction=True).

    Its output goes to ``log``; it is stopped (and killed with its workers if it
    hangs) when the block ends.
    """
    worker = start_qcluster(log, *args, **extra_env)
    try:
        yield worker
    finally:
        try:
            os.killpg(worker.pid, signal.SIGTERM)
        except ProcessLookupError:  # the test stopped it already
            return
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
