"""The webhook intake under attack: nobody can fill the disk, replay a delivery, pass off
another account's job, or crash us with what fal itself may send.

All through the real view, the real verification (the emulator's JWKS) and PostgreSQL.
"""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta

import pytest
from django.core import checks
from django.core.handlers.wsgi import WSGIRequest
from django.db import connection
from django.test import RequestFactory
from django.utils import timezone

from fakes.fal_signing import WebhookSigner, delivery_body, lora_payload
from monitoring.fal import deliveries, signature, signing_keys, views
from monitoring.models import (
    AvatarEvent,
    AvatarStatus,
    EventKind,
    RefusedWebhookCount,
    Training,
    WebhookDelivery,
    WebhookOutcome,
    WebhookVerdict,
)
from monitoring.ops import retention
from notifications.models import Notification
from tests.support import WEBHOOK_URL as URL
from tests.support import snapshot

pytestmark = pytest.mark.django_db


def _table_bytes(models=(WebhookDelivery, RefusedWebhookCount)) -> int:
    tables = [model._meta.db_table for model in models]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE c.relname = ANY(%s)",
            [tables],
        )
        return int(cursor.fetchone()[0])


# --- the disk ------------------------------------------------------------------------


@pytest.mark.postgres  # measured with pg_total_relation_size
def test_a_thousand_forged_requests_with_large_headers_grow_the_database_by_less_than_1_mb(
    deliver, fal, training_avatar
):
    assert connection.vendor == "postgresql"
    training_avatar("req-flood")
    forger = WebhookSigner()
    body = delivery_body("req-flood", payload={**lora_payload("req-flood"), "pad": "x" * 8000})
    huge = "A" * 4000
    headers = {
        **forger.headers(body, "req-flood"),
        "X-Fal-Webhook-Request-Id": "req-flood" + huge,
        "X-Fal-Webhook-User-Id": huge,
        **{f"X-Fal-Padding-{i}": huge for i in range(20)},
        "User-Agent": huge,
    }
    # Warm up: the first rows allocate the tables' first pages and index roots.
    deliver(body, headers=headers)
    before = _table_bytes()
    before_snapshot = snapshot()

    answers = {deliver(body, headers=headers).status_code for _ in range(1000)}

    grown = _table_bytes() - before
    print(f"1,000 forged requests grew the delivery tables by {grown} bytes")
    assert answers == {401}
    assert snapshot() == before_snapshot
    # ~100 kB in practice (at most 2 x 60 small rows, one count per minute and its
    # row versions); 1 MB leaves room for PostgreSQL's page and TOAST allocation.
    assert grown < 1024 * 1024, f"grew by {grown} bytes"
    kept = WebhookDelivery.objects.filter(verdict=WebhookVerdict.BAD_SIGNATURE)
    assert kept.count() <= 2 * 60  # the run may straddle a minute boundary
    assert sum(RefusedWebhookCount.objects.values_list("count", flat=True)) == 1001
    row = kept.first()
    assert set(row.headers) == set(signature.SIGNED_HEADERS)
    assert all(len(value) <= 128 for value in row.headers.values())
    assert len(row.body.encode()) <= deliveries.EXCERPT_BYTES
    assert row.body_size == len(body)
    assert len(row.body_sha256) == 64


@pytest.mark.postgres  # measured with pg_total_relation_size
@pytest.mark.django_db(transaction=True)  # each request commits, as in production
def test_a_day_of_the_worst_refusals_an_outsider_can_send_stays_under_the_daily_budget(
    deliver, fal, settings, training_avatar
):
    """Every verdict an outsider can cause, 150 times each within the minute, with the
    largest headers a server passes: what is kept grows the tables by at most the
    minute's share of WEBHOOK_REFUSED_MAX_MB_PER_DAY."""
    avatar, _ = training_avatar("req-worst")
    huge = "A" * 4000
    body = delivery_body("req-worst", payload={**lora_payload("req-worst"), "pad": "x" * 8000})
    accepted = delivery_body("req-worst", payload=lora_payload("req-worst"))
    signed = fal.signer.headers(accepted, "req-worst")
    assert deliver(accepted, headers=signed).json() == {"outcome": "applied"}
    padding = {f"X-Fal-Padding-{i}": huge for i in range(20)}
    forged = {
        **WebhookSigner().headers(body, "req-worst"),
        "X-Fal-Webhook-User-Id": huge,
        **padding,
    }
    stale = fal.signer.headers(body, "req-worst", timestamp=int(time.time()) - 3600)
    senders = [
        lambda: deliver(body, headers={"User-Agent": huge, **padding}),  # missing headers
        lambda: deliver(body, headers=forged),  # bad signature
        lambda: deliver(body, headers={**stale, **padding}),  # stale
        lambda: deliver(accepted, headers={**signed, **padding}),  # a replay
        lambda: deliver(body, headers={**forged, **padding}, CONTENT_LENGTH="99999999"),
    ]
    for send in senders:  # warm-up: the tables' first pages and index roots
        send()
    before = _table_bytes([WebhookDelivery])

    for send in senders:
        for _ in range(150):
            assert send().status_code in (200, 401, 413)

    # The rows kept stay for the retention period: the table, its TOAST and indexes.
    # The per-minute counts are a few small rows a minute; their updated versions are
    # reclaimed by PostgreSQL (autovacuum), so their live size is what a day keeps.
    grown = _table_bytes([WebhookDelivery])
    grown -= before
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0) + 28 * count(*) "
            f"FROM {RefusedWebhookCount._meta.db_table} t"
        )
        count_rows, count_bytes = cursor.fetchone()
    minutes = RefusedWebhookCount.objects.values("minute").distinct().count()
    per_day = (grown + count_bytes) / minutes * 24 * 60
    print(
        f"worst refusals: deliveries +{grown} bytes, counts {count_rows} rows {count_bytes} "
        f"bytes, over {minutes} minute(s): {per_day / 1e6:.1f} MB a day"
    )
    assert per_day <= settings.WEBHOOK_REFUSED_MAX_MB_PER_DAY * 1_000_000
    kept = WebhookDelivery.objects.exclude(verdict=WebhookVerdict.VALID, outcome="applied")
    assert kept.count() < 5 * 150  # the rest only counted


def test_beyond_the_cap_only_the_count_grows_and_staff_see_it(
    deliver, fal, settings, training_avatar, admin_client
):
    settings.WEBHOOK_REFUSED_ROWS_PER_MINUTE = 3
    training_avatar("req-cap")
    body = delivery_body("req-cap", payload=lora_payload("req-cap"))

    for _ in range(10):
        assert deliver(body, headers={}).status_code == 401

    assert WebhookDelivery.objects.count() in (3, 6)  # 6 if a minute turned over
    counts = RefusedWebhookCount.objects.filter(verdict=WebhookVerdict.MISSING_HEADERS)
    assert sum(counts.values_list("count", flat=True)) == 10
    page = admin_client.get("/admin/monitoring/refusedwebhookcount/")
    assert page.status_code == 200
    assert "Missing headers" in page.content.decode()


def test_refused_rows_and_counts_are_pruned_after_the_retention_hours(
    deliver, fal, settings, training_avatar
):
    settings.RETENTION_REFUSED_WEBHOOK_HOURS = 24
    avatar, _ = training_avatar("req-prune")
    body = delivery_body("req-prune", payload=lora_payload("req-prune"))
    deliver(body, headers={})
    assert deliver(body).status_code == 200  # an accepted one: kept 30 days
    old = timezone.now() - timedelta(hours=25)
    WebhookDelivery.objects.update(received_at=old)
    RefusedWebhookCount.objects.update(minute=old)

    pruned = retention.prune_refused_webhooks()

    assert pruned == {"refused_webhook_deliveries": 1, "refused_webhook_counts": 1}
    assert list(WebhookDelivery.objects.values_list("outcome", flat=True)) == ["applied"]


# --- replays and other accounts ---------------------------------------------------------


@pytest.mark.parametrize("variant", [str.upper, lambda s: s[:64].upper() + s[64:]])
def test_a_case_variant_of_an_accepted_signature_is_a_replay(
    variant, deliver, fal, training_avatar
):
    avatar, _ = training_avatar("req-case")
    body = delivery_body("req-case", payload=lora_payload("req-case"))
    headers = fal.signer.headers(body, "req-case")
    assert deliver(body, headers=headers).json() == {"outcome": "applied"}
    signature = headers["X-Fal-Webhook-Signature"]

    response = deliver(body, headers={**headers, "X-Fal-Webhook-Signature": variant(signature)})

    assert response.status_code == 200
    assert response.json() == {"outcome": "replay"}
    assert AvatarEvent.objects.filter(avatar=avatar, kind=EventKind.STATUS).count() == 2
    assert Notification.objects.count() == 1
    assert set(WebhookDelivery.objects.values_list("signature", flat=True)) == {signature}


def test_a_delivery_for_another_fal_account_is_refused_and_changes_nothing(
    deliver, fal, settings, training_avatar
):
    settings.FAL_WEBHOOK_USER_ID = "our-fal-user"
    training_avatar("req-theirs")
    body = delivery_body("req-theirs", payload=lora_payload("req-theirs"))
    before = snapshot()

    response = deliver(body, headers=fal.signer.headers(body, "req-theirs", user_id="their-user"))

    assert response.status_code == 401
    assert response.json() == {"error": "delivery is for another fal account"}
    assert snapshot() == before
    row = WebhookDelivery.objects.get()
    assert (row.verdict, row.outcome) == (WebhookVerdict.OTHER_ACCOUNT, WebhookOutcome.REJECTED)

    ours = deliver(body, headers=fal.signer.headers(body, "req-theirs", user_id="our-fal-user"))
    assert ours.json() == {"outcome": "applied"}


def test_a_system_check_warns_when_our_fal_user_id_is_unset_in_production(settings):
    settings.DEBUG = False
    settings.FAL_WEBHOOK_USER_ID = None

    ids = {message.id for message in checks.run_checks()}

    assert "avatarsite.W010" in ids
    settings.FAL_WEBHOOK_USER_ID = "our-fal-user"
    assert "avatarsite.W010" not in {message.id for message in checks.run_checks()}


# --- unmatched bodies --------------------------------------------------------------------


def test_an_unmatched_one_megabyte_signed_delivery_keeps_64_kb_and_its_training_gets_a_queue_check(
    deliver, fal, training_avatar, django_capture_on_commit_callbacks
):
    payload = {**lora_payload("req-later"), "pad": "x" * (1024 * 1024 - 2000)}
    body = delivery_body("req-later", payload=payload)
    assert len(body) > 1000 * 1000

    assert deliver(body).json() == {"outcome": "unmatched"}

    row = WebhookDelivery.objects.get()
    assert len(row.body.encode()) <= deliveries.UNMATCHED_BODY_BYTES
    assert row.body_size == len(body) and len(row.body_sha256) == 64

    # The request id appears on a training: not applied from the excerpt, checked instead.
    avatar, training = training_avatar("req-later")
    Training.objects.filter(pk=training.pk).update(next_check_at=None)
    with django_capture_on_commit_callbacks(execute=False):
        assert deliveries.sweep() == 1

    row.refresh_from_db()
    training.refresh_from_db()
    avatar.refresh_from_db()
    assert row.outcome == WebhookOutcome.DEFERRED
    assert avatar.status == AvatarStatus.TRAINING
    assert training.next_check_at is not None and training.next_check_at <= timezone.now()


def test_a_small_unmatched_delivery_is_kept_whole_and_applied_when_its_id_appears(
    deliver, fal, training_avatar
):
    body = delivery_body("req-small", payload=lora_payload("req-small"))
    deliver(body)
    avatar, training = training_avatar("req-small")

    assert deliveries.sweep() == 1

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert WebhookDelivery.objects.get().body == body.decode()


# --- unreadable bodies and fal's own odd JSON ----------------------------------------------


class _BrokenChunks(io.RawIOBase):
    """A server stream that fails mid-body, as gunicorn's chunked reader does on garbage."""

    def __init__(self, first: bytes):
        self.first = first

    def read(self, size: int = -1) -> bytes:
        if self.first:
            chunk, self.first = self.first, b""
            return chunk
        raise ValueError("Invalid chunk size: 'zz'")


def _chunked_request(stream, headers: dict):
    request = RequestFactory().post(URL, data=b"", content_type="application/json", headers=headers)
    request.META.pop("CONTENT_LENGTH", None)
    request.environ["wsgi.input"] = stream
    request.environ["wsgi.input_terminated"] = True
    return request


def test_a_malformed_chunked_body_gets_400_and_a_row(fal, training_avatar):
    training_avatar("req-garbage")
    before = snapshot()

    response = views.fal_webhook(_chunked_request(_BrokenChunks(b'{"request_id": '), {}))

    assert response.status_code == 400
    assert "malformed chunked" in json.loads(response.content)["error"]
    assert snapshot() == before
    row = WebhookDelivery.objects.get()
    assert (row.verdict, row.outcome) == (WebhookVerdict.UNREADABLE, WebhookOutcome.REJECTED)
    assert row.body == '{"request_id": '


def test_a_truncated_body_gets_400_and_a_row(fal, client, training_avatar):
    training_avatar("req-short")
    body = delivery_body("req-short", payload=lora_payload("req-short"))
    environ = (
        RequestFactory()
        .post(
            URL,
            data=b"",
            content_type="application/json",
            headers=fal.signer.headers(body, "req-short"),
        )
        .environ
    )
    # The client said how long the body is, then closed the connection after 50 bytes.
    environ.update({"wsgi.input": io.BytesIO(body[:50]), "CONTENT_LENGTH": str(len(body))})
    request = WSGIRequest(environ)
    before = snapshot()

    response = views.fal_webhook(request)

    assert response.status_code == 400
    assert json.loads(response.content) == {"error": f"body is truncated: 50 of {len(body)} bytes"}
    assert snapshot() == before
    assert WebhookDelivery.objects.get().verdict == WebhookVerdict.UNREADABLE


@pytest.mark.parametrize(
    "oddity",
    [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b'"\\ud800 lone"', b'"\\udfff"'],
    ids=["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "high surrogate", "low surrogate"],
)
def test_a_signed_error_delivery_with_fals_odd_json_is_cleaned_applied_once_and_answered_200(
    oddity, deliver, fal, training_avatar, settings
):
    settings.TRAINING_AUTO_RETRY_MAX = 0  # fal's 500 would otherwise be retried
    avatar, training = training_avatar("req-odd")
    body = (
        b'{"request_id": "req-odd", "gateway_request_id": "req-odd", "status": "ERROR", '
        b'"error": "Invalid status code: 500", "payload": {"detail": "trainer crashed", '
        b'"loss": ' + oddity + b"}}"
    )

    first = deliver(body)
    second = deliver(body, headers=fal.signer.headers(body, "req-odd", timestamp=None))

    assert first.status_code == 200 and first.json() == {"outcome": "applied"}
    assert second.status_code == 200 and second.json()["outcome"] in ("already_done", "replay")
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    loss = training.result["loss"]
    assert loss is None or loss.startswith("\ufffd")
    assert Notification.objects.filter(training=training).count() == 1


# --- crash window: committed as received ---------------------------------------------------


def test_a_delivery_left_received_by_a_crash_is_processed_by_the_worker(
    deliver, fal, training_avatar
):
    avatar, training = training_avatar("req-stranded")
    body = delivery_body("req-stranded", payload=lora_payload("req-stranded"))
    # What a killed web worker leaves: the committed "received" row, nothing applied.
    WebhookDelivery.objects.create(
        received_at=timezone.now() - timedelta(seconds=30),
        headers=fal.signer.headers(body, "req-stranded"),
        header_request_id="req-stranded",
        request_id="req-stranded",
        verdict=WebhookVerdict.VALID,
        outcome=WebhookOutcome.RECEIVED,
        body=body.decode(),
        body_size=len(body),
    )
    young = WebhookDelivery.objects.create(
        header_request_id="req-other",
        request_id="req-other",
        verdict=WebhookVerdict.VALID,
        outcome=WebhookOutcome.RECEIVED,
        body=delivery_body("req-other").decode(),
    )

    assert deliveries.sweep() == 1
    assert deliveries.sweep() == 0

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert Notification.objects.filter(training=training).count() == 1
    stranded = WebhookDelivery.objects.get(request_id="req-stranded")
    assert stranded.outcome == WebhookOutcome.APPLIED and stranded.training == training
    young.refresh_from_db()
    assert young.outcome == WebhookOutcome.RECEIVED  # maybe still in flight: left alone


# --- the signing keys' source --------------------------------------------------------------


def test_a_plain_http_jwks_url_is_a_system_check_error_unless_debug(settings):
    settings.FAL_WEBHOOK_JWKS_URL = "http://rest.fal.ai/.well-known/jwks.json"
    settings.DEBUG = False
    assert "avatarsite.E010" in {m.id for m in checks.run_checks()}

    settings.DEBUG = True
    assert "avatarsite.E010" not in {m.id for m in checks.run_checks()}
    settings.DEBUG = False
    settings.FAL_WEBHOOK_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
    assert "avatarsite.E010" not in {m.id for m in checks.run_checks()}


class _EndlessJwks:
    """A JWKS endpoint that streams megabytes without a Content-Length."""

    def __init__(self):
        import http.server
        import threading

        served = self.sent = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                piece = b'{"keys": [' + b" " * 4086
                try:
                    for _ in range(2500):  # 10 MB
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        served[0] += len(piece)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_jwks_download_stops_at_its_size_cap(settings):
    endless = _EndlessJwks()
    try:
        settings.FAL_WEBHOOK_JWKS_URL = endless.url

        assert signing_keys.refresh() is False

        row = signing_keys.FalSigningKeys.objects.get(url=endless.url)
        assert "more than 65536 bytes" in row.last_error
        assert row.keys == []
        # Stopped reading after the cap: the server could not push the 10 MB through.
        assert endless.sent[0] < 10 * 1024 * 1024
    finally:
        endless.close()


def test_the_worker_has_schedules_for_stranded_deliveries_and_refused_pruning():
    from django.core.management import call_command
    from django.utils.module_loading import import_string
    from django_q.models import Schedule

    from monitoring.ops.schedules import PRUNE_REFUSED_WEBHOOKS, STRANDED_WEBHOOKS

    call_command("migrate", verbosity=0)

    stranded = Schedule.objects.get(name=STRANDED_WEBHOOKS)
    assert (stranded.schedule_type, stranded.minutes) == (Schedule.MINUTES, 1)
    assert import_string(stranded.func) is deliveries.sweep
    pruning = Schedule.objects.get(name=PRUNE_REFUSED_WEBHOOKS)
    assert pruning.schedule_type == Schedule.HOURLY
    assert import_string(pruning.func) is retention.prune_refused_webhooks
