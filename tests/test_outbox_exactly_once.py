"""Exactly once at the worst moment: a worker killed after the other side answered.

Real ``qcluster`` processes, the fake Bot API and a loopback callback receiver. The test
holds the outbox row's lock while the other side answers, so the worker is stuck between
the answer and the row's close, and kills it there (``kill -9`` of its process group).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager

import pytest
import redis
from django.db import connection, transaction
from django.db.models import F

from monitoring import transitions
from monitoring.api.models import CallbackStatus, EventCallback
from monitoring.models import EventSource
from notifications.models import Notification, NotificationAttempt, NotificationStatus
from tests.api_support import give
from tests.fixtures_telegram import STAFF_CHAT_ID
from tests.worker_process import start_qcluster

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

Outcome = NotificationAttempt.Outcome


def wait_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


@contextmanager
def row_locked(model, pk: int):
    """Hold a write lock on one row (PostgreSQL: the kill tests are marked ``postgres``).

    SQLite has only a database-wide write lock: it also stops the worker's other writes
    (the relay's marks, other workers' claims), so the window is no longer this row's.
    """
    with transaction.atomic():
        model.objects.filter(pk=pk).update(last_error=F("last_error"))
        yield
    connection.close()  # a fresh connection for the next statement, whatever happened


def kill_in_the_window(tmp_path, env: dict, *, row, answered: Callable[[], int], n: int) -> None:
    """Start a worker, let it send ``row`` (the ``n``-th time) and kill it before the close."""
    attempts = row.attempt_log
    log = tmp_path / f"worker-{n}.log"
    worker = start_qcluster(log, **env)
    try:
        # Attempt n in flight (the one before it closed as interrupted by this claim).
        wait_until(
            lambda: (
                attempts.filter(outcome="in_flight").exists()
                and attempts.filter(outcome="interrupted").count() == n - 1
            ),
            what=f"attempt {n} in flight",
        )
        with row_locked(type(row), row.pk):
            wait_until(lambda: answered() >= n, what=f"answer {n}")
            time.sleep(0.5)  # the worker now waits for the lock, Telegram's answer in hand
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert attempts.filter(outcome="in_flight").count() == 1, log.read_text()[-2000:]


def run_worker_until(tmp_path, env: dict, done: Callable[[], bool], n: int) -> str:
    log = tmp_path / f"worker-{n}.log"
    worker = start_qcluster(log, **env)
    try:
        wait_until(done, timeout=40, what="the worker to settle the row")
        time.sleep(1.0)  # anything sent a third time would be sent now
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)
    return log.read_text()


@pytest.fixture
def telegram_env(telegram):
    return {
        "NOTIFICATION_BACKEND": "telegram",
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        "TELEGRAM_STAFF_CHAT_ID": str(STAFF_CHAT_ID),
        "NOTIFICATION_LEASE_SECONDS": "2",
        "NOTIFICATION_RATE_PER_CHAT_SECONDS": "0",
        "NOTIFICATION_RETRY_BASE_SECONDS": "0.1",
    }


@pytest.mark.postgres  # a row lock holds the worker in the window (row_locked)
@pytest.mark.parametrize("interruptions", [1, 2])
def test_an_owner_message_killed_between_telegrams_answer_and_the_close_is_sent_at_most_twice(
    telegram, telegram_env, training_avatar, tmp_path, interruptions
):
    avatar, training = training_avatar()
    chat = avatar.owner.telegram_id
    for _ in range(interruptions):
        telegram.script(chat, telegram.ok(delay=1.0))
    transitions.complete(training, lora_url="https://v3.fal.media/l", source=EventSource.CHECK)
    row = Notification.objects.get(audience="owner")

    def told() -> int:
        return len(telegram.messages_to(chat))

    for n in range(1, interruptions + 1):
        kill_in_the_window(tmp_path, telegram_env, row=row, answered=told, n=n)

    def settled() -> bool:
        row.refresh_from_db()
        return row.status not in (NotificationStatus.PENDING, NotificationStatus.SENDING)

    output = run_worker_until(tmp_path, telegram_env, settled, n=interruptions + 1)

    outcomes = list(row.attempt_log.order_by("started_at", "id").values_list("outcome", flat=True))
    assert row.maybe_duplicate, output[-2000:]
    if interruptions == 1:
        # Resent once, marked: the owner may have it twice, never more.
        assert row.status == NotificationStatus.SENT
        assert outcomes == [Outcome.INTERRUPTED, Outcome.SENT]
        assert told() == 2
    else:
        # The resend was interrupted too: not sent a third time, and staff are told.
        assert row.status == NotificationStatus.GIVEN_UP
        assert outcomes == [Outcome.INTERRUPTED, Outcome.INTERRUPTED]
        assert told() == 2
        wait_until(lambda: telegram.messages_to(STAFF_CHAT_ID), what="the staff alert")
        assert f"#{row.pk}" in telegram.messages_to(STAFF_CHAT_ID)[0].plain


@pytest.mark.postgres  # a row lock holds the worker in the window (row_locked)
@pytest.mark.parametrize("interruptions", [1, 2])
def test_an_event_callback_killed_between_the_answer_and_the_close_is_sent_at_most_twice(
    make_api_client, receiver, training_avatar, tmp_path, interruptions
):
    session = make_api_client(callback_url=receiver.url)
    avatar, training = training_avatar()
    give(avatar, session)
    receiver.delay = 1.0
    transitions.complete(training, lora_url="https://v3.fal.media/l", source=EventSource.CHECK)
    row = EventCallback.objects.get()
    env = {"EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS": "1", "EVENT_CALLBACK_TIMEOUT_SECONDS": "2"}

    for n in range(1, interruptions + 1):
        kill_in_the_window(tmp_path, env, row=row, answered=lambda: len(receiver.requests), n=n)
    receiver.delay = 0.0

    def settled() -> bool:
        row.refresh_from_db()
        return row.status not in (CallbackStatus.PENDING, CallbackStatus.SENDING)

    output = run_worker_until(tmp_path, env, settled, n=interruptions + 1)

    outcomes = list(row.attempt_log.order_by("started_at", "id").values_list("outcome", flat=True))
    assert row.maybe_duplicate, output[-2000:]
    ids = {request["headers"]["webhook-id"] for request in receiver.requests}
    assert ids == {row.webhook_id}  # the receiver can tell the resend is the same event
    assert len(receiver.requests) == 2
    if interruptions == 1:
        assert row.status == CallbackStatus.DELIVERED
        assert outcomes == ["interrupted", "delivered"]
    else:
        assert row.status == CallbackStatus.GIVEN_UP
        assert outcomes == ["interrupted", "interrupted"]


def start_redis(port: int, directory) -> subprocess.Popen:
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port)]
        + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    wait_until(lambda: _pings(client), timeout=10, what="redis-server")
    return process


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_after_the_redis_broker_crashes_every_waiting_message_is_sent_within_two_relay_intervals(
    telegram, telegram_env, training_avatar, tmp_path, monkeypatch
):
    from django_q.conf import Conf

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port, tmp_path)
    try:
        # Sixteen owner messages whose tasks are in Redis (written as the transitions do)...
        monkeypatch.setattr(Conf, "ORM", None)
        monkeypatch.setattr(Conf, "REDIS", url)
        owners = []
        for i in range(16):
            avatar, training = training_avatar(request_id=f"redis-{i}", name=f"Редис {i}")
            transitions.complete(
                training, lora_url="https://v3.fal.media/l", source=EventSource.CHECK
            )
            owners.append(avatar.owner.telegram_id)
        assert redis.Redis(port=port).llen("django_q:notifications:q") == 16
        assert Notification.objects.filter(queued_at__isnull=False).count() == 16
        # ...and the broker crashes: it comes back empty.
        server.kill()
        server.wait(10)
        server = start_redis(port, tmp_path)

        relay_seconds = 5.0
        env = {
            **telegram_env,
            "REDIS_URL": url,
            "NOTIFICATION_RELAY_POLL_SECONDS": str(relay_seconds),
        }
        log = tmp_path / "worker.log"
        worker = start_qcluster(log, **env)
        try:
            wait_until(lambda: "Notification relay started" in log.read_text(), what="the relay")
            relay_started = time.monotonic()
            wait_until(lambda: len(telegram.messages) >= 16, timeout=60, what="16 messages")
            waited = time.monotonic() - relay_started
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(20)
    finally:
        server.kill()
    assert sorted(m.chat_id for m in telegram.messages) == sorted(owners)
    assert waited <= 2 * relay_seconds, (waited, log.read_text()[-3000:])
    # The relay says what it re-queued: every one of the 16, perhaps over several passes
    # (a row is taken for lost once its task-taken grace has passed), and on a slow start
    # also a task a worker held past that grace: its second task finds the row sent and
    # does nothing (each owner got one message, above).
    lost = re.findall(r"The broker lost (\d+) task\(s\) of notifications", log.read_text())
    assert sum(map(int, lost)) >= 16, lost
