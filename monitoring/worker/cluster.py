"""One role of the worker: django-q2's own cluster, with a stop that ends in seconds.

Overrides only what two defects of django-q2 1.11 need: signal handlers that only set a
flag, and a bounded stop that puts prefetched and abandoned tasks back (the internals it
relies on are pinned by tests/test_worker_django_q_pin.py). See docs/operations.md#the-worker.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
import uuid
from typing import Any

from django import db
from django.conf import settings
from django.utils import timezone
from django_q.cluster import Sentinel
from django_q.conf import Conf, setproctitle
from django_q.scheduler import scheduler
from django_q.signals import post_execute_in_worker, pre_execute
from django_q.signing import SignedPackage
from django_q.worker import worker

from monitoring import status_checks
from monitoring.models import WorkerHeartbeat
from monitoring.ops import health

logger = logging.getLogger("monitoring.worker")

CHECKS = "checks"
NOTIFICATIONS = "notifications"
ROLES = (CHECKS, NOTIFICATIONS)

# How the grace is shared out, counted back from its end, in seconds.
ABANDON_BEFORE_END = 2.5  # a worker gives up its task (and puts it back)
KILL_WORKERS_BEFORE_END = 1.5  # the role kills its pusher and workers still alive
KILL_MONITOR_BEFORE_END = 1.1  # ... and its monitor (after it stored the last results)
KILL_ROLES_BEFORE_END = 0.8  # the supervisor kills roles still alive

HEARTBEAT_EVERY_SECONDS = 10.0
LATE_WARNING_EVERY_SECONDS = 60.0


def cluster_name(role: str) -> str:
    return settings.NOTIFICATION_CLUSTER if role == NOTIFICATIONS else settings.Q_CLUSTER["name"]


def role_for_cluster(name: str | None) -> str | None:
    """``Q_CLUSTER_NAME`` / ``--name`` as a role: None without a name, "" for an unknown one."""
    if not name:
        return None
    return next((role for role in ROLES if name == cluster_name(role)), "")


def role_environment(role: str) -> dict[str, str]:
    """django-q2 reads its queue name from Q_CLUSTER_NAME at import."""
    env = dict(os.environ)
    if role == NOTIFICATIONS:
        env["Q_CLUSTER_NAME"] = cluster_name(role)
    else:
        env.pop("Q_CLUSTER_NAME", None)
    return env


class _Stop:
    """When the first stop signal reached this process or its parent (monotonic, 0: never):
    a shared double, so children forked after ``install_stop_handlers`` see it set."""

    at: Any = None
    signal_name = ""


STOP = _Stop()


def install_stop_handlers() -> None:
    STOP.at = multiprocessing.Value("d", 0.0, lock=False)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)


def _on_stop_signal(signum: int, _frame: Any) -> None:
    request_stop(signal.Signals(signum).name)


def request_stop(name: str = "internal") -> None:
    """Also as if a signal had arrived (a child ended on its own, for example)."""
    # A shared-memory write and an attribute: safe whatever the interrupted code held.
    if not STOP.at.value:
        STOP.at.value = time.monotonic()
        STOP.signal_name = name


def stopping() -> bool:
    return STOP.at is not None and bool(STOP.at.value)


def seconds_left(before_end: float) -> float:
    """Seconds until ``grace - before_end`` after the stop began (inf while running)."""
    if not stopping():
        return float("inf")
    return STOP.at.value + settings.WORKER_STOP_GRACE_SECONDS - before_end - time.monotonic()


class _StopEvent:
    """The sentinel's ``stop_event``, backed by the flag (django-q2's Event is not signal-safe)."""

    def set(self) -> None:
        request_stop()

    def is_set(self) -> bool:
        return stopping()

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not stopping() and time.monotonic() < end:
            time.sleep(0.05)
        return stopping()


def _prctl(option: int, value: int) -> bool:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's stop still ends us
        return False
    return True


def die_with_parent(sig: int) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent dies."""
    parent = os.getppid()
    if _prctl(1, int(sig)) and os.getppid() != parent:  # PR_SET_PDEATHSIG; parent died before
        os.kill(os.getpid(), sig)


def adopt_orphans() -> None:
    """Linux: orphaned descendants are re-parented to this process (to reap), not to PID 1."""
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def set_process_title(title: str) -> None:
    if setproctitle:
        setproctitle.setproctitle(title)


def put_back(broker: Any, task: dict[str, Any]) -> None:
    """First in line."""
    from django_q.brokers.orm import ORM

    if isinstance(broker, ORM):
        # The row is still there, locked until Q_RETRY_SECONDS: unlocked, it is due at once.
        broker.get_connection().filter(pk=task["ack_id"]).update(lock=timezone.now())
        return
    # Redis (the only other broker settings.Q_CLUSTER sets up): BLPOP removed it, so sign
    # it again (as the pusher read it) and push it back.
    package = SignedPackage.dumps({k: v for k, v in task.items() if k != "ack_id"})
    broker.connection.lpush(broker.list_key, package)


class _Worker:
    def __init__(self, result_queue: Any, timer: Any, ack: Any) -> None:
        from django_q.brokers import get_broker

        self.broker = get_broker()
        self.result_queue = result_queue
        self.timer = timer
        self.ack = ack  # the ORM message in flight, for the role if this process is killed
        self.current: dict[str, Any] | None = None  # the task in flight
        pre_execute.connect(self._starting, weak=False)
        post_execute_in_worker.connect(self._finished, weak=False)
        threading.Thread(target=self._watch_the_stop, name="stop-watch", daemon=True).start()

    def _starting(self, task: dict[str, Any], **_kwargs: Any) -> None:
        if stopping():  # taken from the local queue after the stop began: back, untouched
            put_back(self.broker, task)
            os._exit(0)
        self.current = task
        self.ack.value = task["ack_id"] if isinstance(task.get("ack_id"), int) else -1

    def _finished(self, **_kwargs: Any) -> None:
        self.current = None  # its result goes to the monitor now
        self.ack.value = -1

    def _watch_the_stop(self) -> None:
        while not stopping():
            time.sleep(0.05)
        try:  # this thread's own connection, opened while the task may still finish
            db.connection.ensure_connection()
        except Exception:
            logger.exception("Stopping: no database connection to put a task back with")
        while seconds_left(ABANDON_BEFORE_END) > 0:
            time.sleep(0.05)
        # django-q2's worker hands a result over while holding its timer's lock: holding
        # it, the task in flight (if any) is one whose result will never be stored.
        if self.timer.get_lock().acquire(timeout=0.5):
            if self.current is not None:
                logger.warning(
                    "Stopping: abandoning an unfinished task, back on the queue: %s [%s] "
                    "(what it had claimed is left to its lease)",
                    self.current["name"],
                    self.current["func"],
                )
                try:
                    put_back(self.broker, self.current)
                    self.ack.value = -1
                except Exception:
                    logger.exception("Stopping: could not put the unfinished task back")
            self.result_queue.close()
            self.result_queue.join_thread()  # a result handed over just before
        os._exit(0)


def _run_worker(task_queue: Any, result_queue: Any, timer: Any, timeout: Any, ack: Any) -> None:
    _Worker(result_queue, timer, ack)
    worker(task_queue, result_queue, timer, timeout)


class RoleSentinel(Sentinel):
    def __init__(self, role: str) -> None:
        if Conf.CLUSTER_NAME != cluster_name(role):
            raise RuntimeError(
                f"the {role} role must run with Q_CLUSTER_NAME={cluster_name(role)} "
                f"(django-q2 reads it at import); got {Conf.CLUSTER_NAME}"
            )
        self.role = role
        self.host = socket.gethostname()
        super().__init__(_StopEvent(), threading.Event(), uuid.uuid4(), start=False)
        install_stop_handlers()  # after Sentinel's own (SIGINT ignored, SIGTERM fatal)

    def run(self) -> int:
        set_process_title(f"qcluster {self.role}")
        os.register_at_fork(after_in_child=lambda: die_with_parent(signal.SIGKILL))
        if self.role == CHECKS:
            status_checks.restore_monitoring()
        scheduler(broker=self.broker)  # at once; the guard then runs it every 30 s
        self.start()  # django-q2's: spawn_cluster(), guard() until the flag, stop()
        return 0

    def spawn_worker(self) -> None:
        # Sentinel.spawn_worker with our wrapper as the target.
        timer = multiprocessing.Value("f", -1)
        ack = multiprocessing.Value("q", -1, lock=False)
        process = multiprocessing.get_context("fork").Process(
            target=_run_worker,
            args=(self.task_queue, self.result_queue, timer, self.timeout, ack),
            name=f"Process-{uuid.uuid4().hex}",
        )
        process.daemon = Conf.DAEMONIZE_WORKERS
        process.timer = timer  # type: ignore[attr-defined]
        process.ack = ack  # type: ignore[attr-defined]
        self.pool.append(process)
        process.start()

    def spawn_cluster(self) -> None:
        super().spawn_cluster()
        threading.Thread(target=self._housekeeping, name="heartbeat", daemon=True).start()
        logger.info(
            "Worker role %s running: %s worker process(es) on queue %s",
            self.role,
            self.pool_size,
            Conf.CLUSTER_NAME,
        )

    def _housekeeping(self) -> None:
        due = {"heartbeat": 0.0, "late": time.monotonic() + 5}
        while not stopping():
            now = time.monotonic()
            try:
                if now >= due["heartbeat"]:
                    due["heartbeat"] = now + HEARTBEAT_EVERY_SECONDS
                    self._beat()
                if self.role == CHECKS and now >= due["late"]:
                    due["late"] = now + LATE_WARNING_EVERY_SECONDS
                    _warn_if_notifications_late()
            except Exception:  # the database may be away for a moment: keep beating
                logger.exception("Worker role %s: heartbeat failed", self.role)
                db.connection.close()
            time.sleep(0.2)

    def _beat(self) -> None:
        now = timezone.now()
        updated = WorkerHeartbeat.objects.filter(role=self.role, host=self.host).update(
            pid=os.getpid(), beat_at=now
        )
        if not updated:
            WorkerHeartbeat.objects.update_or_create(
                role=self.role,
                host=self.host,
                defaults={"pid": os.getpid(), "beat_at": now, "started_at": now},
            )

    def stop(self) -> None:
        """Replaces Sentinel.stop: nothing prefetched runs, everything ends by the deadlines."""
        logger.info("Worker role %s stopping (%s)", self.role, STOP.signal_name)
        self.event_out.set()  # the pusher ends after its current dequeue
        while self.pusher.is_alive() and seconds_left(KILL_WORKERS_BEFORE_END) > 0:
            self._put_back_prefetched()  # also unblocks a pusher waiting on a full queue
            time.sleep(0.05)
        self._end([self.pusher], "pusher")
        self._put_back_prefetched()
        # A poison pill per worker: idle ones end at once, busy ones after their task (or
        # at ABANDON_BEFORE_END). The queue holds one: never block on it.
        pills = len(self.pool)
        while any(p.is_alive() for p in self.pool) and seconds_left(KILL_WORKERS_BEFORE_END) > 0:
            try:
                while pills:
                    self.task_queue.put("STOP", block=False)
                    pills -= 1
            except queue.Full:
                pass
            time.sleep(0.05)
        self._end(self.pool, "worker")
        for process in self.pool:
            if process.ack.value >= 0:  # killed before its own put-back got through (ORM)
                try:
                    put_back(self.broker, {"ack_id": process.ack.value})
                except Exception:
                    logger.exception("Stopping: could not put a killed worker's task back")
        self.result_queue.put("STOP")  # the monitor stores the results handed over, then ends
        while self.monitor.is_alive() and seconds_left(KILL_MONITOR_BEFORE_END) > 0:
            time.sleep(0.05)
        self._end([self.monitor], "monitor")
        # Nothing reads the queues any more: the exit must not wait for their feeder
        # threads (one waits for ever on a pipe lock held by a process killed above).
        self.task_queue.cancel_join_thread()
        self.result_queue.cancel_join_thread()
        db.connections.close_all()
        logger.info("Worker role %s stopped", self.role)

    def _put_back_prefetched(self) -> None:
        while True:
            try:
                task = self.task_queue.get(block=False)
            except queue.Empty:
                return
            try:
                put_back(self.broker, task)
            except Exception:
                logger.exception("Stopping: could not put a prefetched task back")

    def _end(self, processes: list[Any], what: str) -> None:
        for process in processes:
            if process.is_alive():
                process.kill()
                logger.warning("Worker role %s: %s did not stop in time: killed", self.role, what)
            process.join(timeout=0.5)


def _warn_if_notifications_late() -> None:
    late = health.notifications_late()
    if late.late:
        logger.warning(
            "Notifications are late: %s message(s) due for more than %s s and not taken by "
            "the notification side (is `qcluster --only notifications` running?)",
            late.waiting,
            late.late_after_seconds,
        )
