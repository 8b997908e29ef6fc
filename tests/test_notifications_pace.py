"""Messages keep pace: the relay, one task per row, the Bot API outage pause, one Bot per process."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import certifi
import pytest
from django.utils import timezone
from django_q.models import OrmQ

from notifications import delivery
from notifications.backends import telegram as telegram_backend
from notifications.models import (
    Audience,
    Notification,
    NotificationKind,
    NotificationStatus,
    PauseCause,
    RateLimitMark,
    SenderState,
)
from tests.support import complete_training
from tests.worker_process import qcluster

pytestmark = pytest.mark.django_db(transaction=True)


def _waiting_messages(make_owner, count: int, *, prefix: str = "pace") -> list[Notification]:
    """Owner messages already in the outbox, due now, with no task queued (a backlog)."""
    rows = []
    for i in range(count):
        owner = make_owner()
        rows.append(
            Notification.objects.create(
                dedup_key=f"{prefix}:{i}",
                kind=NotificationKind.READY,
                audience=Audience.OWNER,
                owner=owner,
                chat_id=owner.telegram_id,
                text=f"<b>{prefix}</b> {i}",
            )
        )
    return rows


def test_a_real_notifications_cluster_relays_a_message_whose_wait_has_passed_within_5_s(
    telegram, training_avatar, tmp_path
):
    avatar, training = training_avatar()
    chat = avatar.owner.telegram_id
    telegram.script(chat, telegram.retry_after(1))
    log = tmp_path / "qcluster.log"
    with qcluster(
        log,
        Q_CLUSTER_NAME="notifications",
        NOTIFICATION_BACKEND="telegram",
        TELEGRAM_BOT_TOKEN=telegram.token,
        TELEGRAM_API_BASE_URL=telegram.base_url,
    ):
        deadline = time.monotonic() + 30
        while "Notification relay started" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        complete_training(training)
        received = telegram.wait_for_messages(1, timeout=15)
    assert len(received) == 1, log.read_text()[-3000:]
    flood_answered_at = telegram.state.request_times[0][1]
    # Due one second after the 429; handed to a sender well within 5 s of that.
    assert 1.0 <= received[0].received_at - flood_answered_at <= 1.0 + 5.0
    assert telegram.requests_to(chat) == 2


def test_the_relay_and_the_sweep_never_queue_a_second_task_for_a_row(
    telegram, make_owner, run_deliveries
):
    rows = _waiting_messages(make_owner, 5)

    assert delivery.sweep() == 5
    assert delivery.relay_once() == 0
    assert delivery.sweep() == 0
    assert OrmQ.objects.count() == 5

    run_deliveries()
    assert sorted(m.chat_id for m in telegram.messages) == sorted(r.chat_id for r in rows)
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}
    assert not Notification.objects.filter(queued_at__isnull=False).exists()


def test_a_new_message_does_not_wait_behind_a_backlog(
    telegram, make_owner, settings, training_avatar
):
    settings.NOTIFICATION_WORKERS = 2
    settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND = 10
    _waiting_messages(make_owner, 40)
    # The senders have managed 6 messages in the last second.
    now = timezone.now()
    RateLimitMark.objects.bulk_create(
        [RateLimitMark(chat_id=i, sent_at=now - timedelta(seconds=0.5)) for i in range(6)]
    )

    # About one second of what the senders manage is queued (6 + one per worker), not
    # the whole backlog, nor more than the limit allows.
    assert delivery.relay_once() == 8
    assert delivery.relay_once() == 0
    avatar, training = training_avatar()
    complete_training(training)  # queued directly by the outbox, behind those eight only
    queued = [package.task["args"][0] for package in OrmQ.objects.order_by("id")]
    new_row = Notification.objects.get(training=training)
    assert len(queued) == 9 and queued[-1] == new_row.pk

    RateLimitMark.objects.bulk_create(
        [RateLimitMark(chat_id=100 + i, sent_at=timezone.now()) for i in range(30)]
    )
    OrmQ.objects.all().delete()
    Notification.objects.update(queued_at=None)
    assert delivery.relay_once() == 10  # the limit caps it


def test_one_relay_works_at_a_time_and_another_takes_over_when_it_stops(db):
    assert delivery.take_turn("worker-a")
    assert not delivery.take_turn("worker-b")
    before = timezone.now()
    assert delivery.take_turn("worker-a")  # renewing its own lease
    lease_ends = SenderState.objects.get().relay_until
    assert before + delivery.RELAY_LEASE <= lease_ends <= timezone.now() + delivery.RELAY_LEASE
    # worker-a died: its lease runs out (moved to the past instead of waiting for it).
    SenderState.objects.update(relay_until=lease_ends - delivery.RELAY_LEASE - timedelta(seconds=1))
    assert delivery.take_turn("worker-b")
    assert not delivery.take_turn("worker-a")


def test_a_bot_api_outage_pauses_sending_and_every_waiting_message_goes_out_when_it_ends(
    telegram, make_owner, drain, settings
):
    settings.NOTIFICATION_OUTAGE_FAILURES = 3
    settings.NOTIFICATION_OUTAGE_PROBE_SECONDS = 0.2
    settings.NOTIFICATION_RETRY_BASE_SECONDS = 30.0  # a per-message backoff would be long
    rows = _waiting_messages(make_owner, 8)
    telegram.outage(502)

    drain(lambda: delivery.sending_paused()[0])
    assert SenderState.get().cause == PauseCause.OUTAGE
    # The pause stops the sends: a few tries (two workers may be mid-send), then probes only.
    sends_before = telegram.state.outage_calls["sendmessage"]
    drain(lambda: False, timeout=1.0)
    assert telegram.state.outage_calls["sendmessage"] == sends_before <= 3 + 1
    assert telegram.state.outage_calls["getme"] >= 2
    assert telegram.messages == []
    assert not Notification.objects.filter(status=NotificationStatus.GIVEN_UP).exists()

    telegram.outage(None)
    recovered = time.monotonic()
    drain(lambda: len(telegram.messages) == len(rows))

    assert len(telegram.messages) == len(rows)
    # Every waiting message was due at once: none waited out its 30 s backoff.
    assert time.monotonic() - recovered < 5
    assert not delivery.sending_paused()[0]
    assert SenderState.objects.get().failure_streak == 0
    assert max(Notification.objects.values_list("attempts", flat=True)) <= 2


def test_a_rejected_token_pause_is_still_told_apart_from_an_outage(telegram, make_owner, drain):
    _waiting_messages(make_owner, 1)
    telegram.accept_token("7700000077:ANOTHER-token")
    drain(lambda: delivery.sending_paused()[0])
    assert SenderState.get().cause == PauseCause.TOKEN


def test_one_bot_and_one_https_connection_serve_every_send_of_a_process(
    telegram, make_owner, run_deliveries, settings, tmp_path, monkeypatch
):
    from fakes.telegram_api import FakeTelegramAPI

    https = FakeTelegramAPI(token=telegram.token, tls_dir=tmp_path / "tls").start()
    try:
        bundle = tmp_path / "ca-bundle.pem"
        bundle.write_text(Path(certifi.where()).read_text() + Path(https.cert_file).read_text())
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        settings.TELEGRAM_API_BASE_URL = https.base_url
        assert https.base_url.startswith("https://")
        rows = _waiting_messages(make_owner, 6)
        for row in rows:
            delivery.deliver(row.pk)

        assert len(https.messages) == 6
        assert https.connections == 1  # one TCP + TLS handshake for all six
        options = json.loads(https.messages[0].options["link_preview_options"])
        assert options == {"is_disabled": True}
        assert "disable_web_page_preview" not in https.messages[0].options
    finally:
        telegram_backend.close_connection()
        https.stop()


def test_the_bot_connection_is_replaced_in_a_forked_process(telegram, settings):
    import os

    first = telegram_backend._shared_connection(telegram.token, telegram.base_url, 5.0)
    assert telegram_backend._shared_connection(telegram.token, telegram.base_url, 5.0) is first
    pid = os.fork()
    if pid == 0:  # the child must not use its parent's loop thread (it does not exist here)
        child = telegram_backend._shared_connection(telegram.token, telegram.base_url, 5.0)
        os._exit(0 if child is not first and child.thread.is_alive() else 1)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert first.thread.is_alive()


def test_a_held_message_is_relayed_once_its_hold_ends(telegram, make_owner, run_deliveries):
    (row,) = _waiting_messages(make_owner, 1)
    Notification.objects.filter(pk=row.pk).update(
        next_attempt_at=timezone.now() + timedelta(seconds=0.5)
    )
    assert delivery.relay_once() == 0
    time.sleep(0.55)
    assert delivery.relay_once() == 1
    run_deliveries()
    assert len(telegram.messages) == 1
