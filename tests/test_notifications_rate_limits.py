"""Telegram's limits, shared through the database by every worker (threads stand in for processes)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from monitoring import transitions
from monitoring.models import EventSource
from notifications import delivery, rate_limits
from notifications.models import Notification

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["database", "redis"])
def limits(request, settings):
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
        import redis

        redis.Redis.from_url(url).flushdb()
        settings.REDIS_URL = url
    else:
        settings.REDIS_URL = None
    settings.NOTIFICATION_RATE_PER_CHAT_SECONDS = 1.0
    settings.NOTIFICATION_RATE_GROUP_PER_MINUTE = 20
    settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND = 25
    return settings


def test_it_allows_one_message_per_second_to_a_chat(limits):
    now = timezone.now()
    assert rate_limits.reserve(42, now=now) == 0.0
    wait = rate_limits.reserve(42, now=now + timedelta(seconds=0.25))
    assert wait == pytest.approx(0.75, abs=0.01)
    assert rate_limits.reserve(43, now=now + timedelta(seconds=0.25)) == 0.0
    assert rate_limits.reserve(42, now=now + timedelta(seconds=1.01)) == 0.0


def test_it_allows_twenty_messages_a_minute_to_a_group(limits):
    group = -100555
    start = timezone.now()
    for i in range(20):
        assert rate_limits.reserve(group, now=start + timedelta(seconds=1.1 * i)) == 0.0
    wait = rate_limits.reserve(group, now=start + timedelta(seconds=23))
    assert wait == pytest.approx(37, abs=0.1)  # until the first of the 20 is a minute old
    # A private chat is not held to the group limit.
    later = start + timedelta(seconds=24)
    for i in range(21):
        assert rate_limits.reserve(7, now=later + timedelta(seconds=1.1 * i)) == 0.0


def _recorded_slots(settings) -> list[float]:
    if settings.REDIS_URL:
        import redis

        key = f"{settings.Q_CLUSTER['name']}:telegram-rate:all"
        scores = redis.Redis.from_url(settings.REDIS_URL).zrange(key, 0, -1, withscores=True)
        return sorted(score / 1000 for _member, score in scores)
    from notifications.models import RateLimitMark

    return sorted(t.timestamp() for t in RateLimitMark.objects.values_list("sent_at", flat=True))


def test_the_overall_limit_holds_across_concurrent_workers(limits):
    limits.NOTIFICATION_RATE_PER_CHAT_SECONDS = 0.0
    granted: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 1.5

    def worker(offset: int) -> None:
        chat = 1000 * offset
        try:
            while time.monotonic() < stop_at:
                chat += 1
                if rate_limits.reserve(chat) == 0.0:
                    with lock:
                        granted.append(time.monotonic())
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # The slots as the limiter recorded them (the order Telegram sees the requests).
    slots = _recorded_slots(limits)
    busiest = max(sum(1 for t in slots if start <= t < start + 1.0) for start in slots)
    assert len(slots) == len(granted)
    assert 25 <= len(granted) <= 50
    assert busiest <= 25


def test_messages_to_one_chat_arrive_at_least_a_second_apart_whatever_the_workers(
    telegram, limits, make_owner, training_avatar, drain
):
    owner = make_owner()
    trainings = [
        training_avatar(request_id=f"r{i}", owner=owner, name=f"N{i}")[1] for i in range(3)
    ]
    for training in trainings:
        transitions.complete(training, lora_url="https://v3.fal.media/l", source=EventSource.CHECK)
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()
    ids = list(Notification.objects.due().values_list("pk", flat=True))

    def send(notification_id: int) -> None:
        try:
            delivery.deliver(notification_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(pk,)) for pk in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The workers did not wait for the chat's next slot: the relay hands the rows
    # back to a sender as each slot comes.
    assert len(telegram.messages_to(owner.telegram_id)) == 1
    drain(lambda: len(telegram.messages_to(owner.telegram_id)) == 3)

    received = sorted(m.received_at for m in telegram.messages_to(owner.telegram_id))
    assert len(received) == 3
    gaps = [b - a for a, b in zip(received, received[1:], strict=False)]
    # The limiter hands out slots a second apart; what the fake Bot API sees also
    # carries each send's own latency (a task started late on a busy machine arrives
    # late, and the next one on time): allow that jitter, not a second message at once.
    assert min(gaps) >= 0.8
