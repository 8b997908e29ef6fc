"""Token pause, secrecy of the token, backends, resend and the queue messages travel on."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from notifications import delivery
from notifications.backends import base, locmem
from notifications.models import (
    Notification,
    NotificationAttempt,
    NotificationStatus,
    SenderState,
)
from tests.support import complete_training

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_pauses_sending_when_the_token_is_rejected_and_resumes_after_a_good_probe(
    telegram, training_avatar, run_deliveries, caplog, settings
):
    settings.NOTIFICATION_PROBE_INTERVAL_SECONDS = 0.0
    good_token = telegram.token
    telegram.accept_token("999:another-bot")  # ours is now refused with 401
    avatar, training = training_avatar()
    chat = avatar.owner.telegram_id

    with caplog.at_level(logging.ERROR, logger="notifications"):
        complete_training(training)
        run_deliveries()

    paused, reason = delivery.sending_paused()
    assert paused and "rejected" in reason
    assert any(r.levelno == logging.ERROR and "paused" in r.getMessage() for r in caplog.records)
    row = Notification.objects.get()
    assert row.status == NotificationStatus.PENDING
    assert row.attempts == 0  # no retries burnt on a bad token
    assert list(row.attempt_log.values_list("outcome", flat=True)) == ["invalid_token"]

    # Still refused: the sweep probes, stays paused and sends nothing.
    assert delivery.sweep() == 0
    run_deliveries()
    assert telegram.get_me_calls == 1
    assert delivery.sending_paused()[0]

    telegram.accept_token(good_token)
    assert delivery.sweep() == 1
    run_deliveries()

    assert not delivery.sending_paused()[0]
    assert len(telegram.messages_to(chat)) == 1
    row.refresh_from_db()
    assert row.status == NotificationStatus.SENT


def test_it_probes_a_paused_sender_at_most_once_per_interval(telegram, settings, db):
    settings.NOTIFICATION_PROBE_INTERVAL_SECONDS = 3600
    telegram.accept_token("999:another-bot")
    SenderState.objects.create(pk=1, paused=True, reason="test", last_probe_at=None)

    for _ in range(3):
        delivery.sweep()

    assert telegram.get_me_calls == 1
    assert delivery.sending_paused()[0]


def test_the_token_never_appears_in_logs_or_recorded_errors(
    telegram, training_avatar, run_deliveries, caplog, settings
):
    settings.NOTIFICATION_MAX_ATTEMPTS = 2
    token = telegram.token
    first, first_training = training_avatar(request_id="r1")
    second, second_training = training_avatar(request_id="r2")
    telegram.script(first.owner.telegram_id, telegram.server_error(), telegram.server_error())
    telegram.script(second.owner.telegram_id, telegram.bad_request())

    with caplog.at_level(logging.DEBUG):
        complete_training(first_training)
        complete_training(second_training)
        run_deliveries()
        telegram.accept_token("1:other")
        delivery.sweep()
        run_deliveries()

    recorded = " ".join(
        list(NotificationAttempt.objects.values_list("error", flat=True))
        + list(Notification.objects.values_list("last_error", flat=True))
        + [SenderState.get().reason]
    )
    assert "Internal Server Error" in recorded and "can't parse entities" in recorded.lower()
    assert token not in caplog.text
    assert token.split(":")[1] not in caplog.text
    assert token not in recorded
    assert token not in repr(base.get_backend())


def test_the_console_backend_prints_the_message(training_avatar, settings, capsys, run_deliveries):
    settings.NOTIFICATION_BACKEND = "notifications.backends.console.ConsoleBackend"
    avatar, training = training_avatar(name="Консоль")

    complete_training(training)
    run_deliveries()

    out = capsys.readouterr().out
    assert f"chat {avatar.owner.telegram_id}" in out and "Консоль" in out
    assert Notification.objects.get().status == NotificationStatus.SENT


def test_the_locmem_backend_keeps_messages_in_memory(training_avatar, run_deliveries):
    locmem.outbox.clear()
    avatar, training = training_avatar(name="Память")

    complete_training(training)
    run_deliveries()

    assert [m.chat_id for m in locmem.outbox] == [avatar.owner.telegram_id]
    assert "Память" in locmem.outbox[0].text


def test_messages_are_queued_on_the_notifications_cluster_not_the_check_queue(
    training_avatar, settings
):
    from django_q.models import OrmQ

    _avatar, training = training_avatar()
    complete_training(training)

    queued = list(OrmQ.objects.all())
    assert [q.key for q in queued] == [settings.NOTIFICATION_CLUSTER]
    assert queued[0].task["func"] == "notifications.delivery.deliver"
    assert settings.NOTIFICATION_CLUSTER != settings.Q_CLUSTER["name"]
    assert settings.NOTIFICATION_CLUSTER in settings.Q_CLUSTER["ALT_CLUSTERS"]


def test_a_message_and_its_delivery_task_commit_together_or_not_at_all(training_avatar):
    from django.db import transaction
    from django_q.models import OrmQ

    from monitoring.models import Avatar

    avatar, training = training_avatar()
    with pytest.raises(RuntimeError), transaction.atomic():
        complete_training(training)
        assert OrmQ.objects.count() == 1  # queued inside the transaction, not after it
        raise RuntimeError("whoever completed the avatar failed before committing")

    assert OrmQ.objects.count() == 0
    assert Notification.objects.count() == 0
    assert Avatar.objects.get(pk=avatar.pk).status == "training"


def test_with_the_redis_broker_the_task_is_queued_only_once_the_message_commits(
    training_avatar, redis_server, monkeypatch, settings
):
    import redis
    from django.db import transaction
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    # django-q2 as configured with REDIS_URL: the task queue is not in our database.
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", redis_server)
    redis.Redis.from_url(redis_server).flushdb()
    queue = get_broker(settings.NOTIFICATION_CLUSTER)
    _avatar, training = training_avatar()

    with transaction.atomic():
        complete_training(training)
        assert queue.queue_size() == 0  # not before the message is committed
    assert queue.queue_size() == 1


def _lose_tasks_seconds_ago(seconds: float) -> None:
    """The broker lost every queued task (a Redis restart), ``seconds`` ago."""
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()
    Notification.objects.filter(queued_at__isnull=False).update(
        queued_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_a_lost_enqueue_is_sent_by_the_next_sweep(telegram, training_avatar, run_deliveries):
    avatar, training = training_avatar()
    complete_training(training)
    _lose_tasks_seconds_ago(3)

    assert delivery.sweep() == 1
    run_deliveries()

    assert len(telegram.messages_to(avatar.owner.telegram_id)) == 1


def test_the_relay_queues_again_only_the_tasks_the_broker_lost(
    telegram, training_avatar, run_deliveries
):
    from django_q.models import OrmQ

    rows = []
    for i in range(3):
        _avatar, training = training_avatar(request_id=f"lost{i}")
        complete_training(training)
        rows.append(Notification.objects.get(training=training))
    _lose_tasks_seconds_ago(3)
    # A fresh message after the restart: its task is in the broker.
    avatar, training = training_avatar(request_id="kept")
    complete_training(training)
    _avatar, just_lost = training_avatar(request_id="young")
    complete_training(just_lost)
    OrmQ.objects.order_by("-id").first().delete()  # lost less than a second ago

    assert delivery.relay_once() == 3  # the three old ones, at once; not the kept one
    assert Notification.objects.filter(training=just_lost, queued_at__isnull=False).exists()
    assert sorted(r for r in run_deliveries()) == ["sent"] * 4
    assert len(telegram.messages) == 4


def test_resend_reopens_only_failed_or_given_up_rows(telegram, training_avatar, run_deliveries):
    failed_avatar, failed = training_avatar(request_id="r1")
    sent_avatar, sent = training_avatar(request_id="r2")
    telegram.script(failed_avatar.owner.telegram_id, telegram.bad_request())
    complete_training(failed)
    complete_training(sent)
    run_deliveries()
    failed_row = Notification.objects.get(training=failed, kind="ready")
    sent_row = Notification.objects.get(training=sent, kind="ready")
    assert failed_row.status == NotificationStatus.FAILED

    assert delivery.resend(sent_row.pk) is False
    assert delivery.resend(failed_row.pk) is True
    run_deliveries()

    failed_row.refresh_from_db()
    assert failed_row.status == NotificationStatus.SENT
    assert len(telegram.messages_to(failed_avatar.owner.telegram_id)) == 1
    assert len(telegram.messages_to(sent_avatar.owner.telegram_id)) == 1


def test_a_staff_alert_without_a_staff_chat_is_recorded_as_skipped(
    telegram, run_deliveries, settings
):
    from notifications import outbox

    settings.TELEGRAM_STAFF_CHAT_ID = None
    outbox.queue_fal_account_alert(status_code=401, detail="No user found for Key ID and Secret")
    run_deliveries()

    row = Notification.objects.get()
    assert row.status == NotificationStatus.SKIPPED
    assert "TELEGRAM_STAFF_CHAT_ID" in row.last_error
    assert telegram.messages == []


def test_connection_errors_and_timeouts_are_retried_as_transient(
    telegram, training_avatar, run_deliveries, settings
):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings.TELEGRAM_API_BASE_URL = f"http://127.0.0.1:{closed_port}/bot"
    avatar, training = training_avatar()
    chat = avatar.owner.telegram_id

    complete_training(training)
    run_deliveries()
    row = Notification.objects.get()
    assert row.status == NotificationStatus.PENDING and row.attempts == 1
    assert row.next_attempt_at > row.created_at

    # Telegram is reachable again but answers too slowly once: a timeout, retried.
    settings.TELEGRAM_API_BASE_URL = telegram.base_url
    settings.NOTIFICATION_SEND_TIMEOUT_SECONDS = 0.3
    telegram.script(chat, telegram.slow(1.0))
    Notification.objects.filter(pk=row.pk).update(next_attempt_at=row.created_at)
    delivery.deliver(row.pk)
    row.refresh_from_db()
    assert row.status == NotificationStatus.PENDING and row.attempts == 2
    assert "timed out" in row.last_error.lower()

    Notification.objects.filter(pk=row.pk).update(next_attempt_at=row.created_at)
    delivery.deliver(row.pk)
    row.refresh_from_db()
    assert row.status == NotificationStatus.SENT
    assert list(row.attempt_log.order_by("id").values_list("outcome", flat=True)) == [
        "transient",
        "transient",
        "sent",
    ]
    # The slow answer did arrive at Telegram although we gave up waiting for it: the
    # one doubt a Bot API without idempotency keys leaves.
    assert len([m for m in telegram.wait_for_messages(2, timeout=3) if m.chat_id == chat]) == 2
