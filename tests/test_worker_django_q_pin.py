"""The worker is django-q2's own cluster, with three overrides that rely on its internals.

``monitoring.worker.cluster.RoleSentinel`` subclasses ``django_q.cluster.Sentinel``:
it replaces ``spawn_worker`` (django-q2's worker plus a stop watch) and ``stop`` (a
bounded stop: nothing prefetched runs), passes a signal-safe flag as ``stop_event``,
and relies on the pusher's ``event``, the worker's timer lock around handing a result
over, the STOP pills and the brokers' ``dequeue`` (ORM lock, Redis BLPOP) to put a task
back. Each function below was read for that against django-q2 1.11.1: this test fails
on an upgrade, on purpose (re-read them; drop an override django-q2 made unnecessary).
"""

from __future__ import annotations

import hashlib
import inspect

import django_q
import django_q.brokers.orm
import django_q.brokers.redis_broker
import django_q.cluster
import django_q.monitor
import django_q.pusher
import django_q.scheduler
import django_q.worker

Sentinel = django_q.cluster.Sentinel

# sha256 of each function's source (first 16 hex digits) in django-q2 1.11.1.
REVIEWED = {
    "Sentinel.__init__": (Sentinel.__init__, "6ddfa0bde90a4a73"),
    "Sentinel.start": (Sentinel.start, "ad6269e4eb57a83e"),
    "Sentinel.spawn_cluster": (Sentinel.spawn_cluster, "254756e3c1916efd"),
    "Sentinel.spawn_worker": (Sentinel.spawn_worker, "3c4764964efe10c1"),
    "Sentinel.guard": (Sentinel.guard, "b48dce5446f6cad6"),
    "Sentinel.reincarnate": (Sentinel.reincarnate, "1c3dc62b7aa35a00"),
    "Sentinel.stop": (Sentinel.stop, "d858ef90cdaaebf5"),
    "worker": (django_q.worker.worker, "b30d59f639b088ea"),
    "pusher": (django_q.pusher.pusher, "6975acb3fb8d45a9"),
    "monitor": (django_q.monitor.monitor, "e45d60ca1db6b997"),
    "scheduler": (django_q.scheduler.scheduler, "d18181953d9d0a32"),
    "ORM.dequeue": (django_q.brokers.orm.ORM.dequeue, "c4e346b7cb21e6ff"),
    "Redis.dequeue": (django_q.brokers.redis_broker.Redis.dequeue, "7144ae1b7f124673"),
}


def test_django_q2_is_the_reviewed_1_11_release():
    assert django_q.VERSION == (1, 11, 1), (
        "django-q2 changed: re-read the functions in REVIEWED against "
        "monitoring/worker/cluster.py, then update this pin"
    )


def test_the_django_q2_internals_the_worker_relies_on_are_unchanged():
    changed = [
        name
        for name, (obj, digest) in REVIEWED.items()
        if hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16] != digest
    ]
    assert changed == [], f"review monitoring/worker/cluster.py against: {changed}"
