"""Our worker replaces django-q2's processes but reuses its internals: pinned to 1.11.

``monitoring.worker.cluster`` re-implements ``django_q.worker.worker`` and the
pusher/sentinel/monitor trio (no prefetch, flag-only signal handlers, a bounded
stop) and calls the broker's ``dequeue``, ``save_task``/``save_cached``, the
scheduler and ``TimeoutHandler`` directly. Any change in them must be read before
upgrading: this test fails on an upgrade, on purpose.
"""

from __future__ import annotations

import hashlib
import inspect

import django_q
import django_q.brokers.orm
import django_q.brokers.redis_broker
import django_q.cluster
import django_q.monitor
import django_q.scheduler
import django_q.timeout
import django_q.worker

# sha256 of each function's source (first 16 hex digits) in django-q2 1.11.1.
REVIEWED = {
    "django_q.worker.worker": (django_q.worker.worker, "b30d59f639b088ea"),
    "django_q.monitor.save_task": (django_q.monitor.save_task, "97bc1fbb3f7b8e68"),
    "django_q.monitor.save_cached": (django_q.monitor.save_cached, "712c8abfb87e31d5"),
    "ORM.dequeue": (django_q.brokers.orm.ORM.dequeue, "c4e346b7cb21e6ff"),
    "Redis.dequeue": (django_q.brokers.redis_broker.Redis.dequeue, "7144ae1b7f124673"),
    "TimeoutHandler": (django_q.timeout.TimeoutHandler, "67e05c6217eb9a87"),
    "scheduler": (django_q.scheduler.scheduler, "d18181953d9d0a32"),
    "Sentinel.guard": (django_q.cluster.Sentinel.guard, "b48dce5446f6cad6"),
}


def test_django_q2_is_the_reviewed_1_11_release():
    assert django_q.VERSION == (1, 11, 1), (
        "django-q2 changed: re-read django_q/cluster.py, worker.py, pusher.py and monitor.py "
        "against monitoring/worker/cluster.py, then update this pin"
    )


def test_the_django_q2_internals_the_worker_relies_on_are_unchanged():
    changed = [
        name
        for name, (obj, digest) in REVIEWED.items()
        if hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16] != digest
    ]
    assert changed == [], f"review monitoring/worker/cluster.py against: {changed}"
