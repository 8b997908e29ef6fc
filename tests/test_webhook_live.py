"""The webhook through a real gunicorn (gunicorn.conf.py): what only a real server shows.

A web worker killed in the middle of a delivery, and a chunked body that is garbage.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from fakes.fal_signing import delivery_body, lora_payload
from monitoring.fal import deliveries
from monitoring.models import (
    Avatar,
    AvatarStatus,
    WebhookDelivery,
    WebhookOutcome,
    WebhookVerdict,
)
from notifications.models import Notification
from tests.support import wait_for
from tests.web_process import gunicorn, worker_pids

pytestmark = pytest.mark.django_db(transaction=True)


def _server_env(fal) -> dict[str, str]:
    return {"FAL_WEBHOOK_JWKS_URL": fal.jwks_url, "SSL_CERT_FILE": fal.ca_bundle}


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.postgres  # holds a row lock from a second connection (FOR UPDATE)
def test_a_web_worker_killed_mid_delivery_leaves_the_delivery_recorded_and_the_worker_processes_it(
    fal, training_avatar, tmp_path
):
    avatar, training = training_avatar("req-killed")
    body = delivery_body("req-killed", payload=lora_payload("req-killed"))
    headers = {**fal.signer.headers(body, "req-killed"), "Content-Type": "application/json"}
    db = connection.settings_dict

    with gunicorn(tmp_path / "gunicorn.log", **_server_env(fal)) as (server, port):
        # Processing blocks on the avatar's row, which this test holds locked.
        lock = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])
        lock.execute("SELECT 1 FROM monitoring_avatar WHERE id = %s FOR UPDATE", [avatar.pk])
        answers: list = []

        def post() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", "/webhooks/fal/", body=body, headers=headers)
                answers.append(conn.getresponse().status)
            except OSError as exc:
                answers.append(exc)

        client = threading.Thread(target=post)
        client.start()
        wait_for(
            lambda: WebhookDelivery.objects.filter(outcome=WebhookOutcome.RECEIVED).exists(),
            20,
            "the delivery committed as received",
            every=0.05,
        )
        wait_for(_waiting_on_a_lock, 20, "the delivery to wait on the avatar's lock", every=0.05)
        [worker] = worker_pids(server.pid)
        os.kill(worker, signal.SIGKILL)
        client.join(timeout=30)
        lock.rollback()
        lock.close()

    assert answers and not (isinstance(answers[0], int) and answers[0] == 200)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.verdict, delivery.outcome) == (WebhookVerdict.VALID, WebhookOutcome.RECEIVED)
    assert delivery.body == body.decode()
    assert Avatar.objects.get(pk=avatar.pk).status == AvatarStatus.TRAINING

    # The worker's periodic task, once the delivery is no longer in flight anywhere.
    assert deliveries.sweep(now=timezone.now() + timedelta(seconds=20)) == 1

    delivery.refresh_from_db()
    assert delivery.outcome == WebhookOutcome.APPLIED
    assert Avatar.objects.get(pk=avatar.pk).status == AvatarStatus.COMPLETED
    assert Notification.objects.filter(training=training).count() == 1


def test_chunked_garbage_through_gunicorn_gets_400_and_a_row(fal, training_avatar, tmp_path):
    training_avatar("req-chunks")

    with gunicorn(tmp_path / "gunicorn.log", **_server_env(fal)) as (_server, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /webhooks/fal/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                b'5\r\n{"req\r\nzz-not-a-size\r\ngarbage\r\n0\r\n\r\n'
            )
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk

    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"malformed chunked" in payload
    row = WebhookDelivery.objects.get()
    assert (row.verdict, row.outcome) == (WebhookVerdict.UNREADABLE, WebhookOutcome.REJECTED)
    assert row.error.startswith("body could not be read (InvalidChunkSize)")
