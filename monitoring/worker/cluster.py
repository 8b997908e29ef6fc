"""One role of the worker: a django-q2 cluster that stops in seconds, whatever signal it gets.

django-q2 1.11's own cluster (``django_q.cluster``) cannot stop cleanly: its signal
handler calls ``Cluster.stop`` → ``Event.set`` → ``Condition.notify``, which waits
for a sentinel that may have died of the same signal (a process-group SIGTERM
deadlocks it forever); its pusher prefetches up to ``workers²`` tasks into a local
queue, and a stopping cluster runs them all before the poison pills; and its
sentinel and workers die at once on a group SIGTERM, in the middle of a send.

So this module runs the same tasks with django-q2's own pieces (the broker, the
signed packages, ``save_task`` for results, the scheduler, the timeout handler) but
its own processes:

* **No prefetch.** Each worker process pulls one task from the broker only when it
  is free, so there is never a batch waiting in a local queue to be drained.
* **Signal handlers only set a flag** (an attribute assignment: no lock, no I/O), so
  a second signal, or the same signal to the whole process group, is harmless.
* **A bounded stop.** After the first SIGTERM/SIGINT no worker takes a new task; a
  task in flight may finish until ``grace - 2.5 s`` (so a Telegram send gets less
  than ``grace - 1 s``), then it is abandoned: its broker message is put back (the
  ORM row unlocked, the Redis message pushed back to the front) and what it had
  claimed is left to its short lease. The role process kills any worker still alive
  at ``grace - 1.5 s``; the supervisor kills any role still alive at ``grace - 0.8 s``.
  Workers die with their role process (``PR_SET_PDEATHSIG``), so a ``kill -9``
  of the parent leaves nothing behind.

Pinned to django-q2 1.11 (``tests/test_worker_django_q_pin.py`` fails on an upgrade):
the functions reused here are internal.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pydoc
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from django import db
from django.conf import settings
from django.utils import timezone

from monitoring import restore
from monitoring.models import WorkerHeartbeat
from monitoring.ops import health

logger = logging.getLogger("monitoring.worker")

CHECKS = "checks"
NOTIFICATIONS = "notifications"
ROLES = (CHECKS, NOTIFICATIONS)

# How the grace is shared out, counted back from its end, in seconds.
ABANDON_BEFORE_END = 2.5  # a worker gives up its task (and puts the message back)
KILL_WORKERS_BEFORE_END = 1.5  # the role kills workers still alive
KILL_ROLES_BEFORE_END = 0.8  # the supervisor kills roles still alive

SCHEDULER_EVERY_SECONDS = 30.0  # as django-q2's guard does
HEARTBEAT_EVERY_SECONDS = 10.0
LATE_WARNING_EVERY_SECONDS = 60.0
# django-q2's own time limit is enforced inside the task (SIGALRM); a worker stuck in C
# code past it by this much is killed and replaced.
HARD_TIMEOUT_MARGIN_SECONDS = 10.0


def cluster_name(role: str) -> str:
    """The django-q2 cluster (queue) each role serves."""
    return settings.NOTIFICATION_CLUSTER if role == NOTIFICATIONS else settings.Q_CLUSTER["name"]


def role_for_cluster(name: str | None) -> str | None:
    """``Q_CLUSTER_NAME`` / ``--name`` as a role (the old way of starting notifications)."""
    if not name:
        return None
    for role in ROLES:
        if name == cluster_name(role):
            return role
    return ""


def grace_seconds() -> float:
    return float(settings.WORKER_STOP_GRACE_SECONDS)


# --- Signals: a flag, nothing else ------------------------------------------------------


class _StopFlag:
    """When the first stop signal arrived (monotonic), in this process."""

    at: float | None = None
    signal_name: str = ""


STOP = _StopFlag()


def _on_stop_signal(signum: int, _frame: Any) -> None:
    # Only attribute assignments: safe whatever the interrupted code was holding.
    if STOP.at is None:
        STOP.at = time.monotonic()
        STOP.signal_name = signal.Signals(signum).name


def install_stop_handlers() -> None:
    STOP.at = None
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)


def request_stop() -> None:
    """Stop as if a signal had arrived (a child ended on its own, for example)."""
    if STOP.at is None:
        STOP.at = time.monotonic()
        STOP.signal_name = "internal"


def seconds_left(before_end: float) -> float:
    """Seconds until ``grace - before_end`` after the stop began (inf while running)."""
    if STOP.at is None:
        return float("inf")
    return STOP.at + grace_seconds() - before_end - time.monotonic()


def die_with_parent(sig: int) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent dies."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's stop still ends us
        return
    if os.getppid() != parent:  # the parent died before the call
        os.kill(os.getpid(), sig)


def set_process_title(title: str) -> None:
    from django_q.conf import setproctitle

    if setproctitle:
        setproctitle.setproctitle(title)


# --- Putting a broker message back ------------------------------------------------------------


def release_message(broker: Any, ack_id: Any, raw: Any) -> None:
    """Give an unfinished task back to the queue, for another worker (or the next start)."""
    from django_q.brokers.orm import ORM
    from django_q.brokers.redis_broker import Redis

    if isinstance(broker, ORM):
        # The row stays; unlocked, it is due at once instead of after Q_RETRY_SECONDS.
        broker.get_connection().filter(pk=ack_id).update(lock=timezone.now())
    elif isinstance(broker, Redis):
        # BLPOP removed it: back to the front of the list, first to be taken. (A killed
        # worker's message is not known here: its claims are left to their leases.)
        if raw is not None:
            broker.connection.lpush(broker.list_key, raw)
    elif raw is not None:
        broker.enqueue(raw)


# --- A worker process --------------------------------------------------------------------------


@dataclass
class _Slot:
    """What the role process knows about one of its workers."""

    index: int
    busy_since: Any = field(default_factory=lambda: multiprocessing.Value("d", 0.0))
    ack_id: Any = field(default_factory=lambda: multiprocessing.Value("q", -1))
    process: Any = None  # the worker's multiprocessing process, once started


class _Worker:
    """Takes one task at a time from the broker, runs it, stores its result, acknowledges it."""

    def __init__(self, role: str, slot: _Slot) -> None:
        self.role = role
        self.slot = slot
        self.current: tuple[Any, Any] | None = None  # (ack id, raw message) in flight
        self.finishing = threading.Lock()
        self.abandon = threading.Event()

    def run(self) -> None:
        install_stop_handlers()
        die_with_parent(signal.SIGKILL)
        set_process_title(f"qcluster {self.role} worker {self.slot.index}")
        from django_q.brokers import get_broker
        from django_q.conf import Conf
        from django_q.signals import post_spawn

        self.broker = get_broker()
        post_spawn.send(sender="django_q", proc_name=multiprocessing.current_process().name)
        threading.Thread(target=self._watch_the_stop, name="stop-watch", daemon=True).start()
        done = 0
        while STOP.at is None:
            try:
                messages = self.broker.dequeue() or []
            except Exception:
                logger.exception("Could not take a task from the broker")
                time.sleep(1)
                continue
            for ack_id, raw in messages:
                if STOP.at is not None:
                    # Taken while the stop began: back to the queue, untouched.
                    release_message(self.broker, ack_id, raw)
                    continue
                self._run(ack_id, raw)
                done += 1
            if Conf.RECYCLE and done >= Conf.RECYCLE:
                break  # the role starts a fresh worker (memory growth)
        db.connections.close_all()

    def _run(self, ack_id: Any, raw: Any) -> None:
        from django_q.conf import Conf
        from django_q.exceptions import TimeoutException
        from django_q.monitor import save_cached, save_task
        from django_q.signals import post_execute, post_execute_in_worker, pre_execute
        from django_q.signing import BadSignature, SignedPackage
        from django_q.timeout import TimeoutHandler
        from django_q.utils import close_old_django_connections, get_func_repr

        try:
            task = SignedPackage.loads(raw)
        except (TypeError, BadSignature):
            logger.exception("A task on the queue could not be read; dropped")
            self.broker.fail(ack_id)
            return
        task["cluster"] = Conf.CLUSTER_NAME
        task["ack_id"] = ack_id
        self.current = (ack_id, raw)
        self.slot.ack_id.value = ack_id if isinstance(ack_id, int) else -1
        self.slot.busy_since.value = time.time()
        func = task["func"]
        func_name = get_func_repr(func)
        set_process_title(
            f"qcluster {self.role} worker {self.slot.index} processing {task['name']}"
        )
        if not callable(func):
            func = pydoc.locate(func)
        close_old_django_connections()
        timeout = task.pop("timeout", Conf.TIMEOUT)
        timeout = -1 if timeout is None else int(timeout)
        pre_execute.send(sender="django_q", func=func, task=task)
        try:
            if func is None:
                raise ValueError(f"Function {task['func']} is not defined")
            with TimeoutHandler(timeout):
                result, success = func(*task["args"], **task["kwargs"]), True
        except (Exception, TimeoutException) as exc:
            result, success = f"{exc} : {traceback.format_exc()}", False
        with self.finishing:
            task["result"], task["success"], task["stopped"] = result, success, timezone.now()
            post_execute_in_worker.send(sender="django_q", func=func, task=task)
            try:
                if task.get("cached", False):
                    save_cached(task, self.broker)
                else:
                    save_task(task, self.broker)
                ack = task.pop("ack_id", False)
                if ack and (success or task.get("ack_failure", False)):
                    self.broker.acknowledge(ack)
            finally:
                self.current = None
                self.slot.ack_id.value = -1
                self.slot.busy_since.value = 0.0
        post_execute.send(sender="django_q", task=task)
        if success:
            logger.debug("Processed %s (%s)", func_name, task["name"])
        else:
            logger.error("Failed %s (%s) - %s", func_name, task["name"], result)
        set_process_title(f"qcluster {self.role} worker {self.slot.index} idle")

    def _watch_the_stop(self) -> None:
        """Abandon the task in flight once the grace is nearly over (a thread: the task blocks)."""
        while STOP.at is None:
            time.sleep(0.05)
        # Putting the message back needs the database (a new connection can take a
        # while on a busy host): open it now, while the task may still finish.
        putting_back = threading.Thread(target=self._put_back, name="put-back", daemon=True)
        putting_back.start()
        while seconds_left(ABANDON_BEFORE_END) > 0:
            time.sleep(0.05)
        self.abandon.set()
        # The database or Redis may not answer: half a second, then the process ends
        # regardless (the role puts an ORM message back too).
        putting_back.join(timeout=0.5)
        os._exit(0)

    def _put_back(self) -> None:
        try:
            db.connection.ensure_connection()
        except Exception:
            logger.exception("Stopping: no database connection to put a task back with")
        self.abandon.wait()
        if not self.finishing.acquire(timeout=0.2):
            return  # its result is being stored right now: nothing to put back
        try:
            if self.current is not None:
                ack_id, raw = self.current
                logger.warning(
                    "Stopping: abandoning an unfinished task (back on the queue; what it had "
                    "claimed is left to its lease)"
                )
                release_message(self.broker, ack_id, raw)
        except Exception:
            logger.exception("Stopping: could not put the unfinished task back on the queue")


def _worker_main(role: str, slot: _Slot) -> None:
    _Worker(role, slot).run()


# --- The role process ------------------------------------------------------------------------------


class RoleCluster:
    """Runs one role: its worker processes, django-q2's scheduler, the role's heartbeat."""

    def __init__(self, role: str) -> None:
        from django_q.conf import Conf

        if Conf.CLUSTER_NAME != cluster_name(role):
            raise RuntimeError(
                f"the {role} role must run with Q_CLUSTER_NAME={cluster_name(role)} "
                f"(django-q2 reads it at import); got {Conf.CLUSTER_NAME}"
            )
        self.role = role
        self.workers_count = int(Conf.WORKERS)
        self.task_timeout = Conf.TIMEOUT
        self.host = socket.gethostname()
        self.slots: list[_Slot] = []
        self.context = multiprocessing.get_context("fork")

    def run(self) -> int:
        install_stop_handlers()
        set_process_title(f"qcluster {self.role}")
        from django_q.brokers import get_broker

        self.broker = get_broker()
        self.broker.ping()
        if self.role == CHECKS:
            restore.restore_monitoring()
        db.connections.close_all()  # never share a connection with a forked worker
        for index in range(self.workers_count):
            slot = _Slot(index)
            self.slots.append(slot)
            self._spawn(slot)
        logger.info(
            "Worker role %s running: %s worker process(es) on queue %s",
            self.role,
            self.workers_count,
            cluster_name(self.role),
        )
        self._guard()
        self._stop()
        return 0

    def _spawn(self, slot: _Slot) -> None:
        db.connections.close_all()
        slot.busy_since.value = 0.0
        slot.ack_id.value = -1
        process = self.context.Process(
            target=_worker_main, args=(self.role, slot), name=f"{self.role}-worker-{slot.index}"
        )
        process.daemon = True
        process.start()
        slot.process = process

    def _guard(self) -> None:
        from django_q.scheduler import scheduler

        due = {"scheduler": 0.0, "heartbeat": 0.0, "late": time.monotonic() + 5}
        while STOP.at is None:
            now = time.monotonic()
            for slot in self.slots:
                self._look_after(slot)
            try:
                if now >= due["scheduler"]:
                    due["scheduler"] = now + SCHEDULER_EVERY_SECONDS
                    scheduler(broker=self.broker)
                if now >= due["heartbeat"]:
                    due["heartbeat"] = now + HEARTBEAT_EVERY_SECONDS
                    self._beat()
                if self.role == CHECKS and now >= due["late"]:
                    due["late"] = now + LATE_WARNING_EVERY_SECONDS
                    _warn_if_notifications_late()
            except Exception:  # the database may be away for a moment: keep guarding
                logger.exception("Worker role %s: housekeeping failed", self.role)
                db.connections.close_all()
            time.sleep(0.2)

    def _look_after(self, slot: _Slot) -> None:
        process = slot.process
        if process is None or STOP.at is not None:
            return
        if not process.is_alive():
            process.join()
            if process.exitcode != 0:
                # Its task stays locked until Q_RETRY_SECONDS, as django-q2 does: a task
                # that kills its worker must not be retried in a tight loop.
                logger.critical(
                    "Worker %s of role %s died (exit code %s); starting another",
                    slot.index,
                    self.role,
                    process.exitcode,
                )
            self._spawn(slot)
            return
        busy = slot.busy_since.value
        if (
            busy
            and self.task_timeout
            and time.time() - busy > self.task_timeout + HARD_TIMEOUT_MARGIN_SECONDS
        ):
            logger.critical(
                "Worker %s of role %s is stuck past the task timeout; replacing it",
                slot.index,
                self.role,
            )
            process.kill()
            process.join()
            self._spawn(slot)

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

    def _stop(self) -> None:
        logger.info("Worker role %s stopping (%s)", self.role, STOP.signal_name)
        alive = [
            (slot, slot.process)
            for slot in self.slots
            if slot.process is not None and slot.process.is_alive()
        ]
        for _slot, process in alive:
            # One signal each; a worker that had it already from the group ignores it.
            try:
                process.terminate()  # SIGTERM
            except ProcessLookupError:
                pass
        while alive and seconds_left(KILL_WORKERS_BEFORE_END) > 0:
            time.sleep(0.05)
            alive = [(slot, process) for slot, process in alive if process.is_alive()]
        for slot, process in alive:
            process.kill()
            process.join()
            logger.warning(
                "Worker %s of role %s did not stop in time: killed", slot.index, self.role
            )
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(timeout=0.2)
            if slot.ack_id.value >= 0:
                # A worker that abandoned (or was killed in) a task: its ORM message is
                # unlocked here too, in case its own put-back did not make it.
                try:
                    release_message(self.broker, int(slot.ack_id.value), None)
                except Exception:
                    logger.exception("Could not put an abandoned task back on the queue")
        db.connections.close_all()
        logger.info("Worker role %s stopped", self.role)


def _warn_if_notifications_late() -> None:

    late = health.notifications_late()
    if late.late:
        logger.warning(
            "Notifications are late: %s message(s) due for more than %s s and not taken by "
            "the notification side (is `qcluster --only notifications` running?)",
            late.waiting,
            late.late_after_seconds,
        )
