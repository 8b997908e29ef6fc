"""A stopping worker puts its unfinished task back on the queue, on both brokers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from monitoring.worker.cluster import release_message


@pytest.mark.django_db
def test_an_abandoned_task_on_the_orm_broker_is_unlocked_at_once():
    from django_q.brokers.orm import ORM
    from django_q.models import OrmQ

    broker = ORM(list_key="avatars")
    broker.enqueue("signed-package")
    [(ack_id, raw)] = broker.dequeue()
    assert OrmQ.objects.get(pk=ack_id).lock > timezone.now() + timedelta(seconds=60)

    release_message(broker, ack_id, raw)

    assert OrmQ.objects.get(pk=ack_id).lock <= timezone.now()
    assert broker.dequeue() == [(ack_id, raw)]  # the next worker takes it


def test_an_abandoned_task_on_the_redis_broker_goes_back_to_the_front(redis_server, settings):
    import redis
    from django_q.brokers.redis_broker import Redis

    broker = Redis(list_key="put-back-test")
    broker.connection = redis.Redis.from_url(redis_server)
    broker.delete_queue()
    broker.enqueue("first")
    broker.enqueue("second")
    [(ack_id, raw)] = broker.dequeue()
    assert raw == b"first"

    release_message(broker, ack_id, raw)

    assert broker.queue_size() == 2
    assert broker.dequeue() == [(None, b"first")]
    broker.delete_queue()
