"""A stopping worker puts a task it did not run, or did not finish, back first in line."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.signing import SignedPackage

from monitoring.worker.cluster import put_back


def as_the_pusher_hands_it_over(ack_id, raw) -> dict:
    return {**SignedPackage.loads(raw), "cluster": "avatars", "ack_id": ack_id}


def package(name: str) -> str:
    return SignedPackage.dumps({"id": name, "name": name, "func": "math.floor", "args": (1,)})


@pytest.mark.django_db
def test_an_abandoned_task_on_the_orm_broker_is_unlocked_at_once():
    from django_q.brokers.orm import ORM
    from django_q.models import OrmQ

    broker = ORM(list_key="avatars")
    broker.enqueue(package("first"))
    [(ack_id, raw)] = broker.dequeue()
    assert OrmQ.objects.get(pk=ack_id).lock > timezone.now() + timedelta(seconds=60)

    put_back(broker, as_the_pusher_hands_it_over(ack_id, raw))

    assert OrmQ.objects.get(pk=ack_id).lock <= timezone.now()
    assert broker.dequeue() == [(ack_id, raw)]  # the next worker takes it


def test_an_abandoned_task_on_the_redis_broker_goes_back_to_the_front(redis_server, settings):
    import redis
    from django_q.brokers.redis_broker import Redis

    broker = Redis(list_key="put-back-test")
    broker.connection = redis.Redis.from_url(redis_server)
    broker.delete_queue()
    broker.enqueue(package("first"))
    broker.enqueue(package("second"))
    [(ack_id, raw)] = broker.dequeue()

    put_back(broker, as_the_pusher_hands_it_over(ack_id, raw))

    assert broker.queue_size() == 2
    [(_none, again)] = broker.dequeue()
    assert SignedPackage.loads(again)["name"] == "first"
    assert "ack_id" not in SignedPackage.loads(again)
    broker.delete_queue()
