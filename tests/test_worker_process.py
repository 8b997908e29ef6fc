"""The worker as an operator runs it: ``python manage.py qcluster``, real processes, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from bench.scratch import create_active_trainings
from monitoring import status_checks, transitions
from monitoring.models import Avatar, AvatarStatus, CheckRun, EventSource, FalStatus, Training
from monitoring.trainings import start_training
from notifications.models import Notification
from tests.support import wait_for
from tests.worker_process import qcluster, start_qcluster

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ENDPOINT = "fal-ai/flux-lora-portrait-trainer"
GRACE = 8.0  # WORKER_STOP_GRACE_SECONDS' default: the tests stop with the real one


def telegram_env(telegram) -> dict[str, str]:
    return {
        "NOTIFICATION_BACKEND": "telegram",
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        "NOTIFICATION_RATE_PER_CHAT_SECONDS": "0",
        "NOTIFICATION_RATE_GLOBAL_PER_SECOND": "1000",
        "NOTIFICATION_RATE_GROUP_PER_MINUTE": "1000",
    }


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def running_trainings(n: int, first_telegram_id: int) -> list[Training]:
    """N trainings running on the emulator (``fal.adopt_unknown``), all due now."""
    now = timezone.now()
    _avatars, trainings = create_active_trainings(
        n,
        first_telegram_id=first_telegram_id,
        training_fields=lambda i: {
            "endpoint": ENDPOINT,
            "fal_request_id": f"proc-{first_telegram_id}-{i:05d}",
            "fal_status": FalStatus.IN_PROGRESS,
            "submitted_at": now - timedelta(minutes=5),
            "started_at": now - timedelta(minutes=4),
            "next_check_at": now - timedelta(seconds=1),
        },
    )
    return trainings


def stop_and_time(worker: subprocess.Popen, sig: signal.Signals, target: str) -> float:
    """Send ``sig`` to the main PID or the whole group; seconds until every process is gone."""
    started = time.monotonic()
    if target == "group":
        os.killpg(worker.pid, sig)
    else:
        os.kill(worker.pid, sig)
    try:
        worker.wait(timeout=GRACE + 5)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        raise AssertionError(f"the worker did not stop within {GRACE + 5} s") from None
    wait_for(lambda: not group_alive(worker.pid), GRACE + 5, "every worker process to end")
    return time.monotonic() - started


def assert_no_task_left_locked() -> None:
    from django_q.models import OrmQ

    locked = OrmQ.objects.filter(lock__gt=timezone.now())
    assert not locked.exists(), [(q.key, q.lock) for q in locked]


# --- One command does everything -----------------------------------------------------------


def test_one_qcluster_completes_a_training_and_tells_its_owner(
    fal, telegram, make_avatar, tmp_path
):
    fal.drop_webhooks()  # only the worker's periodic check can finish it
    fal.script(queue_seconds=0, run_seconds=0)
    avatar = make_avatar(name="Одна команда")
    outcome = start_training(avatar, source=EventSource.COMMAND)
    fal.finish(outcome.training.fal_request_id)
    log = tmp_path / "qcluster.log"

    with qcluster(log, **telegram_env(telegram)):
        message = wait_for(
            lambda: next(iter(telegram.messages), None), 60, "the owner's message", log
        )
        time.sleep(0.5)  # anything extra would arrive now

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert [m.chat_id for m in telegram.messages] == [avatar.owner.telegram_id]
    assert "Одна команда" in message.text
    assert Notification.objects.get().status == "sent"


def test_only_notifications_runs_the_notification_side_alone(telegram, training_avatar, tmp_path):
    _avatar, training = training_avatar(request_id="only-n", name="Только уведомления")
    log = tmp_path / "notifications.log"

    with qcluster(log, "--only", "notifications", **telegram_env(telegram)):
        transitions.complete(
            training, lora_url="https://v3.fal.media/l", source=EventSource.WEBHOOK
        )
        wait_for(lambda: telegram.messages, 60, "the owner's message", log)
        time.sleep(0.5)

    output = log.read_text()
    assert len(telegram.messages) == 1
    assert "Worker role notifications running" in output
    assert "Worker role checks" not in output and "восстановлен" not in output


def test_with_the_notification_side_stopped_healthz_reports_notifications_late(
    fal, make_avatar, tmp_path, settings
):
    interval = 5  # late after 10 s
    settings.CHECK_INTERVAL_SECONDS = interval
    settings.CHECK_LEASE_SECONDS = 2
    fal.drop_webhooks()
    fal.script(queue_seconds=0, run_seconds=0)
    avatar = make_avatar(name="Никто не сказал")
    outcome = start_training(avatar, source=EventSource.COMMAND)
    fal.finish(outcome.training.fal_request_id)
    log = tmp_path / "checks.log"
    web = Client()

    with qcluster(log, "--only", "checks", CHECK_INTERVAL_SECONDS=str(interval)):
        message = wait_for(Notification.objects.first, 60, "the completion's message", log)
        assert web.get("/healthz").json()["notifications_late"] is False
        wait_for(
            lambda: web.get("/healthz").json()["notifications_late"],
            2 * interval + 3,
            "notifications_late",
            log,
        )
        late_after = (timezone.now() - message.next_attempt_at).total_seconds()
        strict = web.get("/healthz?strict=1")

    assert 2 * interval <= late_after <= 2 * interval + 1.5
    assert strict.status_code == 503
    assert strict.json()["notifications_late"] is True
    assert Notification.objects.get().status == "pending"  # nobody sent it


# --- Clean stops -------------------------------------------------------------------------------

STOPS = [
    pytest.param(sig, target, id=f"{sig.name}-{target}")
    for sig in (signal.SIGTERM, signal.SIGINT)
    for target in ("pid", "group")
]


@pytest.mark.parametrize(("sig", "target"), STOPS)
def test_an_idle_worker_stops_at_once(sig, target, tmp_path):
    log = tmp_path / "qcluster.log"
    worker = start_qcluster(log)
    wait_for(lambda: "Worker role checks running" in log.read_text(), 60, "start-up", log)
    wait_for(lambda: "Worker role notifications running" in log.read_text(), 30, "start-up", log)

    seconds = stop_and_time(worker, sig, target)

    print(f"\nidle stop, {sig.name} to the {target}: {seconds:.2f} s")
    assert seconds < 3.0, log.read_text()[-3000:]
    assert worker.returncode == 0
    assert_no_task_left_locked()


def test_a_role_that_does_not_stop_is_killed_and_its_processes_reaped_within_the_grace(tmp_path):
    log = tmp_path / "qcluster.log"
    worker = start_qcluster(log)
    wait_for(lambda: "Worker role checks running" in log.read_text(), 60, "start-up", log)
    roles = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True)
    checks = next(
        int(pid)
        for pid in roles.stdout.split()
        if "checks" in Path(f"/proc/{pid}/cmdline").read_text()
    )
    os.kill(checks, signal.SIGSTOP)  # hung: only the supervisor's SIGKILL ends it

    seconds = stop_and_time(worker, signal.SIGINT, "pid")

    print(f"\nstop with a hung role, SIGINT to the pid: {seconds:.2f} s")
    # Its processes die with it and are reaped by the supervisor, not left to PID 1.
    assert seconds < GRACE, log.read_text()[-3000:]
    assert "Worker role checks did not stop in time: killed" in log.read_text()


def stop_busy(fal, log, sig, target, also=lambda: True, **env):
    """Start a worker against a slow fal (a batch of 500 takes ~13 s at 40 calls at a
    time), stop it in the middle of the check run once ``also()`` holds; returns
    (worker, seconds the stop took, fal calls made before the signal)."""
    fal.adopt_unknown, fal.status_latency = True, 1.0
    worker = start_qcluster(log, **env)
    try:
        wait_for(lambda: sum(fal.status_calls.values()) >= 200, 60, "the check run", log)
        wait_for(also, 30, "the owners' messages", log)
        calls_at_stop = sum(fal.status_calls.values())
        seconds = stop_and_time(worker, sig, target)
    finally:
        fal.adopt_unknown, fal.status_latency = False, 0.0
        if group_alive(worker.pid):
            os.killpg(worker.pid, signal.SIGKILL)
    return worker, seconds, calls_at_stop


@pytest.mark.parametrize(("sig", "target"), STOPS)
def test_a_worker_in_the_middle_of_a_check_run_of_1000_trainings_stops_within_the_grace(
    sig, target, fal, telegram, training_avatar, tmp_path
):
    running_trainings(1000, first_telegram_id=80_000_000)
    # Owners waiting for their messages while the check run is busy.
    finished = [training_avatar(request_id=f"done-{i}")[1] for i in range(5)]
    for training in finished:
        transitions.complete(
            training, lora_url="https://v3.fal.media/l", source=EventSource.WEBHOOK
        )
    log = tmp_path / "qcluster.log"
    worker, seconds, calls_at_stop = stop_busy(
        fal, log, sig, target, lambda: len(telegram.messages) >= 5, **telegram_env(telegram)
    )

    print(f"\nbusy stop (1,000 trainings), {sig.name} to the {target}: {seconds:.2f} s")
    output = log.read_text()
    assert seconds < GRACE, output[-3000:]
    assert worker.returncode == 0, output[-3000:]
    # No new task was taken and no prefetched batch drained: at most the calls already in
    # flight (40 per batch being worked) were made after the signal.
    assert sum(fal.status_calls.values()) - calls_at_stop <= 2 * 40 * GRACE
    assert_no_task_left_locked()
    lease_end = timezone.now() + timedelta(seconds=30)
    active = Training.objects.filter(finished_at__isnull=True, fal_request_id__startswith="proc-")
    assert active.count() == 1000
    # Nothing lost: every training is still active, and every one not checked yet (a
    # batch that finished before the signal reschedules its trainings one interval on)
    # is due again within its short lease.
    assert not active.filter(last_checked_at__isnull=True, next_check_at__gt=lease_end).exists()
    # Nothing sent twice.
    chats = sorted(m.chat_id for m in telegram.messages)
    assert chats == sorted(Avatar.objects.get(pk=t.avatar_id).owner.telegram_id for t in finished)
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}


def test_on_the_redis_broker_a_stopped_worker_pushes_its_abandoned_batches_back(
    fal, redis_server, tmp_path
):
    import redis
    from django_q.signing import SignedPackage

    queue = redis.Redis.from_url(redis_server)
    queue.delete("django_q:avatars:q", "django_q:notifications:q")
    running_trainings(1000, first_telegram_id=82_000_000)
    log = tmp_path / "qcluster.log"
    _worker, seconds, _calls = stop_busy(fal, log, signal.SIGTERM, "group", REDIS_URL=redis_server)

    print(f"\nbusy stop on Redis, SIGTERM to the group: {seconds:.2f} s")
    output = log.read_text()
    assert seconds < GRACE, output[-3000:]
    abandoned = re.findall(r"abandoning an unfinished task, back on the queue: (.+?) \[", output)
    assert abandoned
    # Each abandoned task is back on the queue, once; nothing lost: every training not
    # checked yet is due again within its lease.
    queued = [SignedPackage.loads(raw) for raw in queue.lrange("django_q:avatars:q", 0, -1)]
    ids = [task["id"] for task in queued]
    assert len(ids) == len(set(ids))
    assert not Counter(abandoned) - Counter(task["name"] for task in queued)
    lease_end = timezone.now() + timedelta(seconds=30)
    unchecked = Training.objects.filter(
        fal_request_id__startswith="proc-", last_checked_at__isnull=True
    )
    assert unchecked.exists() and not unchecked.filter(next_check_at__gt=lease_end).exists()


# --- A worker killed in the middle of a run ------------------------------------------------------


@pytest.mark.parametrize("broker", ["orm", "redis"])
def test_a_worker_killed_mid_run_leaves_every_training_due_again_within_one_interval(
    broker, fal, tmp_path, settings, request
):
    interval = 10
    settings.CHECK_INTERVAL_SECONDS = interval
    settings.CHECK_LEASE_SECONDS = 5
    settings.CHECK_BATCH_SIZE = 100_000  # the runs below run inline, in this process
    env = {"CHECK_INTERVAL_SECONDS": str(interval), "CHECK_BATCH_SIZE": "100"}
    if broker == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server")
    fal.adopt_unknown = True
    fal.status_latency = 1.0
    trainings = running_trainings(
        200, first_telegram_id=90_000_000 if broker == "orm" else 91_000_000
    )
    log = tmp_path / "checks.log"
    worker = start_qcluster(log, "--only", "checks", **env)
    try:
        wait_for(lambda: sum(fal.status_calls.values()) >= 40, 60, "the batches to start", log)
        os.killpg(worker.pid, signal.SIGKILL)  # the host dies
        killed_at = timezone.now()
        worker.wait()
        wait_for(lambda: not group_alive(worker.pid), 10, "the processes to die")
        assert "fanned out as 2 batches" in "".join(
            CheckRun.objects.values_list("notes", flat=True)
        )
        fal.status_latency = 0.0

        # The next scheduled run, inside one interval of the death, finds all of them due.
        pause = (killed_at + timedelta(seconds=interval - 1.5) - timezone.now()).total_seconds()
        time.sleep(max(0.0, pause))
        run = status_checks.run_periodic_check()
    finally:
        fal.adopt_unknown = False
        fal.status_latency = 0.0
        if group_alive(worker.pid):
            os.killpg(worker.pid, signal.SIGKILL)

    assert run.due == 200 and run.checked == 200
    assert (run.started_at - killed_at).total_seconds() < interval
    checked_again = Training.objects.filter(
        pk__in=[t.pk for t in trainings], last_checked_at__gt=killed_at
    )
    assert checked_again.count() == 200

    if broker == "orm":
        # The dead worker's batches come back after Q_RETRY_SECONDS: they check nothing.
        from django_q.models import OrmQ

        queued = [q.task for q in OrmQ.objects.all()]
        orphans = [task for task in queued if task["func"] == "monitoring.tasks.check_batch"]
        assert orphans, "the dead worker's batches should still be on the ORM queue"
        calls = sum(fal.status_calls.values())
        from monitoring import tasks

        assert [tasks.check_batch(*task["args"]) for task in orphans] == [0] * len(orphans)
        assert sum(fal.status_calls.values()) == calls
