"""Delivery through python-telegram-bot to the fake Bot API on loopback.

Each test drives the real path: a transition writes the outbox row, on commit the
row is enqueued on the notifications cluster's broker, the queued task runs
(``run_deliveries``) and python-telegram-bot sends it over HTTP to the fake.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from monitoring import transitions
from monitoring.models import EventSource, Owner
from notifications import delivery
from notifications.models import (
    ChatMigration,
    Notification,
    NotificationAttempt,
    NotificationKind,
    NotificationStatus,
    UnreachableChat,
)
from tests.fixtures_telegram import STAFF_CHAT_ID
from tests.support import complete_training

pytestmark = pytest.mark.django_db(transaction=True)

Outcome = NotificationAttempt.Outcome


def _outcomes(notification: Notification) -> list[str]:
    return list(
        notification.attempt_log.order_by("started_at", "id").values_list("outcome", flat=True)
    )


def test_it_sends_one_message_when_the_webhook_and_the_check_finish_the_same_avatar_at_once(
    telegram, training_avatar, run_deliveries
):
    avatar, training = training_avatar(name="Гонка")
    barrier = threading.Barrier(2)
    results = []

    def finish(source):
        try:
            barrier.wait()
            results.append(complete_training(training, source=source).changed)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=finish, args=(source,))
        for source in (EventSource.WEBHOOK, EventSource.CHECK)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    run_deliveries()
    delivery.sweep()
    run_deliveries()

    assert sorted(results) == [False, True]
    received = telegram.messages_to(avatar.owner.telegram_id)
    assert len(received) == 1
    assert "Гонка" in received[0].plain
    assert Notification.objects.get().status == NotificationStatus.SENT


def test_it_retries_a_row_whose_worker_died_after_claiming_it_once_the_lease_expires(
    telegram, training_avatar, run_deliveries, settings
):
    settings.NOTIFICATION_LEASE_SECONDS = 0.5
    avatar, training = training_avatar()
    complete_training(training)
    row = Notification.objects.get()
    Notification.objects.filter(pk=row.pk).update(next_attempt_at=row.created_at)

    # A worker claims the row and dies before sending; its queued task is lost with it.
    assert delivery.claim(row.pk, worker="dead-worker") is not None
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()

    # While the lease holds, nobody else may send it.
    assert delivery.sweep() == 0
    assert delivery.deliver(row.pk) == "not due or claimed elsewhere"
    assert telegram.messages == []

    time.sleep(0.6)
    assert delivery.sweep() == 1
    run_deliveries()
    delivery.sweep()
    run_deliveries()

    assert len(telegram.messages_to(avatar.owner.telegram_id)) == 1
    row.refresh_from_db()
    assert row.status == NotificationStatus.SENT
    assert row.claimed_by != "dead-worker"


def test_a_flood_control_wait_frees_the_worker_and_the_relay_sends_once_it_is_due(
    telegram, training_avatar, run_deliveries, drain
):
    avatar, training = training_avatar()
    chat = avatar.owner.telegram_id
    telegram.script(chat, telegram.retry_after(1))

    complete_training(training)
    started = time.monotonic()
    assert run_deliveries() == ["flood control: retry in 1 s"]
    # The worker did not sleep through the one-second wait: it is free again at once.
    assert time.monotonic() - started < 0.9
    row = Notification.objects.get()
    assert row.status == NotificationStatus.PENDING and row.queued_at is None
    assert telegram.messages_to(chat) == []
    assert delivery.relay_once() == 0  # not due before retry_after

    drain(lambda: bool(telegram.messages_to(chat)))

    (received,) = telegram.messages_to(chat)
    assert 1.0 <= received.received_at - telegram.state.request_times[0][1] < 2.0
    assert telegram.requests_to(chat) == 2
    row.refresh_from_db()
    assert row.status == NotificationStatus.SENT
    assert row.attempts == 0  # flood control is not a failed attempt
    assert _outcomes(row) == [Outcome.RETRY_AFTER, Outcome.SENT]


@pytest.mark.parametrize("answer", ["blocked", "deactivated", "never_started"])
def test_it_marks_the_owner_unreachable_on_403_and_never_retries(
    telegram, training_avatar, run_deliveries, answer
):
    avatar, training = training_avatar()
    chat = avatar.owner.telegram_id
    telegram.script(chat, getattr(telegram, answer)())

    complete_training(training)
    run_deliveries()
    delivery.sweep()
    run_deliveries()

    owner = Owner.objects.get(pk=avatar.owner_id)
    unreachable = UnreachableChat.objects.get(chat_id=owner.telegram_id)
    assert "Forbidden" in unreachable.reason
    assert unreachable.since is not None
    row = Notification.objects.get()
    assert row.status == NotificationStatus.UNREACHABLE
    assert _outcomes(row) == [Outcome.UNREACHABLE]
    assert telegram.requests_to(chat) == 1
    assert telegram.messages_to(chat) == []


def test_it_does_not_call_telegram_for_an_owner_already_known_unreachable(
    telegram, training_avatar, make_avatar, run_deliveries
):
    avatar, training = training_avatar()
    chat = avatar.owner.telegram_id
    telegram.script(chat, telegram.blocked())
    complete_training(training)
    run_deliveries()

    second = make_avatar(owner=avatar.owner, name="Второй")
    started = transitions.begin_training(
        second, endpoint="fal-ai/x", arguments={}, webhook_url="", source=EventSource.COMMAND
    )
    transitions.record_submitted(started.training, request_id="req-2", source=EventSource.COMMAND)
    transitions.cancel(started.training, source=EventSource.STAFF)
    run_deliveries()

    assert telegram.requests_to(chat) == 1
    latest = Notification.objects.get(kind=NotificationKind.CANCELLED)
    assert latest.status == NotificationStatus.UNREACHABLE
    assert "unreachable" in latest.last_error


def test_it_stores_a_migrated_staff_chat_and_sends_once_to_the_new_id(
    telegram, training_avatar, run_deliveries
):
    new_chat = -1009999999999
    telegram.script(STAFF_CHAT_ID, telegram.migrated(new_chat))
    _avatar, training = training_avatar()

    transitions.flag_stuck(training, reason="in queue for 2 hours")
    delivery.sweep()
    run_deliveries()

    assert telegram.messages_to(STAFF_CHAT_ID) == []
    assert len(telegram.messages_to(new_chat)) == 1
    assert ChatMigration.objects.get(old_chat_id=STAFF_CHAT_ID).new_chat_id == new_chat
    row = Notification.objects.get(kind=NotificationKind.STUCK)
    assert _outcomes(row) == [Outcome.MIGRATED, Outcome.SENT]
    assert row.chat_id == new_chat

    # The stored id overrides the setting from now on: no more tries at the old id.
    transitions.fail(training, error_message="boom", source=EventSource.CHECK)
    from notifications import outbox

    outbox.queue_fal_account_alert(status_code=403, detail="User is locked")
    run_deliveries()
    assert telegram.requests_to(STAFF_CHAT_ID) == 1
    assert len(telegram.messages_to(new_chat)) == 2


def test_it_backs_off_on_repeated_500s_then_succeeds(telegram, training_avatar, drain):
    avatar, training = training_avatar()
    chat = avatar.owner.telegram_id
    telegram.script(
        chat, telegram.server_error(), telegram.server_error(502), telegram.server_error()
    )

    complete_training(training)
    results = drain(lambda: bool(telegram.messages_to(chat)))
    # Each failure handed the row back instead of holding the worker through the wait.
    assert [r.split(",")[0] for r in results if r != "sent"] == ["transient error"] * 3

    row = Notification.objects.get()
    assert row.status == NotificationStatus.SENT
    assert row.attempts == 3
    assert _outcomes(row) == [Outcome.TRANSIENT] * 3 + [Outcome.SENT]
    times = telegram.state.request_times
    gaps = [later - earlier for (_c, earlier), (_d, later) in zip(times, times[1:], strict=False)]
    # 0.05 s, 0.1 s, 0.2 s: each wait is longer than the one before.
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    assert len(telegram.messages_to(chat)) == 1


def test_it_gives_up_after_the_last_attempt_and_alerts_staff(
    telegram, training_avatar, drain, settings
):
    settings.NOTIFICATION_MAX_ATTEMPTS = 3
    avatar, training = training_avatar(name="Невезучий")
    chat = avatar.owner.telegram_id
    telegram.script(chat, *[telegram.server_error()] * 5)

    complete_training(training)
    drain(lambda: bool(telegram.messages_to(STAFF_CHAT_ID)))

    row = Notification.objects.get(kind=NotificationKind.READY)
    assert row.status == NotificationStatus.GIVEN_UP
    assert row.attempts == 3
    assert telegram.requests_to(chat) == 3
    assert "Internal Server Error" in row.last_error
    staff = telegram.messages_to(STAFF_CHAT_ID)
    assert len(staff) == 1
    assert f"#{row.pk}" in staff[0].plain and "Internal Server Error" in staff[0].plain


def test_a_failure_and_a_cancellation_each_notify_their_owner_once(
    telegram, training_avatar, run_deliveries
):
    failed_avatar, failed = training_avatar(request_id="req-fail", name="Первый")
    cancelled_avatar, cancelled = training_avatar(request_id="req-cancel", name="Второй")

    for _ in range(2):  # the webhook and the check both see each ending
        transitions.fail(
            failed,
            error_type="image_load_error",
            error_message="Could not load image 3.jpg",
            source=EventSource.WEBHOOK,
        )
        transitions.cancel(cancelled, source=EventSource.STAFF)
    run_deliveries()
    delivery.sweep()
    run_deliveries()

    failure = telegram.messages_to(failed_avatar.owner.telegram_id)
    cancellation = telegram.messages_to(cancelled_avatar.owner.telegram_id)
    assert len(failure) == 1 and len(cancellation) == 1
    assert "Не удалось обучить аватар Первый" in failure[0].plain
    assert "фото" in failure[0].plain  # what happened and what to do next
    assert "image_load_error" not in failure[0].plain and "3.jpg" not in failure[0].plain
    assert "отменено" in cancellation[0].plain


def test_it_sends_one_staff_alert_per_stuck_episode(telegram, training_avatar, run_deliveries):
    avatar, training = training_avatar(name="Завис")

    assert transitions.flag_stuck(training, reason="in progress for 3 hours")
    assert not transitions.flag_stuck(training, reason="still stuck")
    delivery.sweep()
    run_deliveries()
    delivery.sweep()
    run_deliveries()
    assert len(telegram.messages_to(STAFF_CHAT_ID)) == 1

    transitions.clear_stuck(training)
    assert transitions.flag_stuck(training, reason="stuck again")
    delivery.sweep()
    run_deliveries()

    staff = telegram.messages_to(STAFF_CHAT_ID)
    assert len(staff) == 2
    assert "Завис" in staff[0].plain and "in progress for 3 hours" in staff[0].plain
    assert "stuck again" in staff[1].plain


def test_fifty_trainings_stuck_at_once_become_one_digest(telegram, training_avatar, run_deliveries):
    trainings = [training_avatar(request_id=f"req-{i}", name=f"A{i}")[1] for i in range(50)]
    for training in trainings:
        transitions.flag_stuck(training, reason="in queue for 2 hours")

    delivery.sweep()  # the end of the check run that flagged them
    run_deliveries()
    delivery.sweep()
    run_deliveries()

    staff = telegram.messages_to(STAFF_CHAT_ID)
    assert len(staff) == 1
    assert "Зависли обучения: 50" in staff[0].plain
    assert "A0" in staff[0].plain
    assert len(staff[0].text) <= 4096
    assert Notification.objects.filter(status=NotificationStatus.MERGED).count() == 50
    assert Notification.objects.get(kind=NotificationKind.STUCK_DIGEST).status == "sent"


def test_names_with_markup_characters_and_emoji_arrive_intact(
    telegram, make_owner, training_avatar, run_deliveries
):
    name = "Кот <b>Тим</b> & 🐱 “best” <script>"
    english = make_owner(language="en")
    avatar, training = training_avatar(name=name, owner=english)

    complete_training(training)
    run_deliveries()

    (received,) = telegram.messages_to(english.telegram_id)
    assert received.parse_mode == "HTML"
    assert name in received.plain
    assert received.plain.startswith("🎉 Your avatar is ready!")
    assert "portrait" in received.plain


@pytest.mark.parametrize("round_", range(3))
def test_the_real_webhook_and_the_real_periodic_check_racing_send_one_message(
    telegram, fal, make_avatar, run_deliveries, settings, round_
):
    from django.test import Client

    from monitoring.models import Training
    from monitoring.status_checks import check_trainings
    from monitoring.trainings import start_training

    settings.FAL_CALL_TIMEOUT_SECONDS = 5.0
    fal.drop_webhooks()
    fal.script(queue_seconds=60)
    avatar = make_avatar(name=f"Гонка {round_}")
    training = start_training(avatar, source=EventSource.COMMAND).training
    fal.finish(training.fal_request_id)
    body, headers = fal.webhook_for(training.fal_request_id)
    barrier = threading.Barrier(2)
    answers = {}

    def webhook():
        try:
            barrier.wait()
            answers["webhook"] = (
                Client()
                .post("/webhooks/fal/", data=body, content_type="application/json", headers=headers)
                .status_code
            )
        finally:
            connection.close()

    def periodic_check():
        try:
            barrier.wait()
            answers["check"] = check_trainings(
                [Training.objects.get(pk=training.pk)], source="check"
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=webhook), threading.Thread(target=periodic_check)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run_deliveries()
    delivery.sweep()
    run_deliveries()

    assert answers["webhook"] == 200
    received = telegram.messages_to(avatar.owner.telegram_id)
    assert len(received) == 1
    assert f"Гонка {round_}" in received[0].plain


def test_a_fal_account_alert_reaches_staff_without_the_fal_key(telegram, run_deliveries, settings):
    from notifications import outbox

    outbox.queue_fal_account_alert(
        status_code=401, detail=f"No user found for Key {settings.FAL_KEY}"
    )
    outbox.queue_fal_account_alert(status_code=401, detail="again, same hour")
    run_deliveries()

    (alert,) = telegram.messages_to(STAFF_CHAT_ID)
    assert "401" in alert.plain and "ключ fal отклонён" in alert.plain
    assert settings.FAL_KEY not in alert.plain
    assert settings.FAL_KEY.split(":")[1] not in alert.plain


def _die_mid_send(row: Notification) -> None:
    """A worker claims the row, opens its attempt (the request is out), and dies."""
    claimed = delivery.claim(row.pk, worker="dead-worker")
    assert claimed is not None
    NotificationAttempt.objects.create(
        notification=claimed,
        chat_id=claimed.chat_id,
        outcome=Outcome.IN_FLIGHT,
        worker="dead-worker",
    )


def test_a_send_interrupted_by_a_dying_worker_is_resent_once_marked_may_be_a_duplicate(
    telegram, training_avatar, drain, settings
):
    settings.NOTIFICATION_LEASE_SECONDS = 0.3
    avatar, training = training_avatar()
    complete_training(training)
    row = Notification.objects.get()
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()
    _die_mid_send(row)

    drain(lambda: bool(telegram.messages_to(avatar.owner.telegram_id)))

    dead, sent = row.attempt_log.order_by("started_at", "id")
    assert dead.outcome == Outcome.INTERRUPTED and dead.finished_at is not None
    assert "may or may not have arrived" in dead.error
    assert sent.outcome == Outcome.SENT and sent.worker != "dead-worker"
    assert len(telegram.messages_to(avatar.owner.telegram_id)) == 1
    row.refresh_from_db()
    assert row.status == NotificationStatus.SENT and row.maybe_duplicate


def test_a_send_interrupted_twice_is_not_sent_a_third_time_and_staff_are_told(
    telegram, training_avatar, drain, settings
):
    settings.NOTIFICATION_LEASE_SECONDS = 0.2
    avatar, training = training_avatar()
    complete_training(training)
    row = Notification.objects.get()
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()
    _die_mid_send(row)
    time.sleep(0.25)
    _die_mid_send(row)  # the resend dies in the middle too

    drain(lambda: bool(telegram.messages_to(STAFF_CHAT_ID)))

    row.refresh_from_db()
    assert row.status == NotificationStatus.GIVEN_UP and row.maybe_duplicate
    assert telegram.messages_to(avatar.owner.telegram_id) == []  # at most two, never three
    assert list(row.attempt_log.values_list("outcome", flat=True)) == [Outcome.INTERRUPTED] * 2
    (alert,) = telegram.messages_to(STAFF_CHAT_ID)
    assert f"#{row.pk}" in alert.plain
