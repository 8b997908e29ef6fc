"""A real notifications cluster (``Q_CLUSTER_NAME=notifications qcluster``) sends committed messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monitoring import transitions
from monitoring.models import EventSource
from notifications.models import Notification
from tests.worker_process import qcluster

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_real_notifications_cluster_sends_each_committed_message_once(
    telegram, training_avatar, tmp_path
):
    trainings = [training_avatar(request_id=f"w{i}", name=f"Воркер {i}") for i in range(5)]
    log = tmp_path / "qcluster.log"
    with qcluster(
        log,
        Q_CLUSTER_NAME="notifications",
        NOTIFICATION_BACKEND="telegram",
        TELEGRAM_BOT_TOKEN=telegram.token,
        TELEGRAM_API_BASE_URL=telegram.base_url,
    ):
        for _avatar, training in trainings:
            transitions.complete(
                training, lora_url="https://v3.fal.media/l", source=EventSource.WEBHOOK
            )
        telegram.wait_for_messages(5, timeout=30)
        time.sleep(0.5)  # anything extra would arrive now
    output = log.read_text()
    chats = sorted(m.chat_id for m in telegram.messages)
    assert chats == sorted(a.owner.telegram_id for a, _t in trainings), output[-3000:]
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}
    assert "restor" not in output.lower()  # startup restore belongs to the main cluster
