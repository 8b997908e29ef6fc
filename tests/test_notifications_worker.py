"""A real notifications cluster (``Q_CLUSTER_NAME=notifications qcluster``) sends committed messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from monitoring import transitions
from monitoring.models import EventSource
from notifications.models import Notification

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_real_notifications_cluster_sends_each_committed_message_once(
    telegram, training_avatar, tmp_path
):
    trainings = [training_avatar(request_id=f"w{i}", name=f"Воркер {i}") for i in range(5)]
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "Q_CLUSTER_NAME": "notifications",
        "NOTIFICATION_BACKEND": "telegram",
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "qcluster.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for _avatar, training in trainings:
            transitions.complete(
                training, lora_url="https://v3.fal.media/l", source=EventSource.WEBHOOK
            )
        telegram.wait_for_messages(5, timeout=30)
        time.sleep(0.5)  # anything extra would arrive now
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    output = log.read_text()
    chats = sorted(m.chat_id for m in telegram.messages)
    assert chats == sorted(a.owner.telegram_id for a, _t in trainings), output[-3000:]
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}
    assert "restor" not in output.lower()  # startup restore belongs to the main cluster
