"""The fal emulator speaks fal's queue API to the real fal-client over HTTPS."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests

ENDPOINT = "fal-ai/flux-lora-portrait-trainer"


def _submit(fal, payload=None, webhook=None):
    url = f"{fal.base_url}/{ENDPOINT}"
    params = {"fal_webhook": webhook} if webhook else None
    return requests.post(
        url,
        json=payload or {"images_data_url": "https://example.com/a.zip"},
        params=params,
        headers={"Authorization": "Key id:secret"},
        verify=fal.cert_file,
        timeout=5,
    )


def _client():
    import fal_client

    return fal_client.SyncClient(key="id:secret")


def test_it_answers_submit_with_fals_shape_and_the_client_follows_the_job(fal):
    fal.script(queue_seconds=60, run_seconds=60, queue_position=4)
    answer = _submit(fal).json()
    assert set(answer) >= {
        "request_id",
        "status_url",
        "response_url",
        "cancel_url",
        "queue_position",
    }
    request_id = answer["request_id"]

    import fal_client

    assert _client().status(ENDPOINT, request_id) == fal_client.Queued(position=4)
    fal.script(request_id, queue_seconds=0)
    running = _client().status(ENDPOINT, request_id, with_logs=True)
    assert isinstance(running, fal_client.InProgress) and running.logs
    fal.finish(request_id)
    completed = _client().status(ENDPOINT, request_id)
    assert isinstance(completed, fal_client.Completed) and completed.error is None
    result = _client().result(ENDPOINT, request_id)
    assert result["diffusers_lora_file"]["url"].endswith(".safetensors")
    assert fal.status_calls[request_id] == 4  # result() costs one status call


def test_it_reports_a_failed_job_as_completed_with_error_and_a_422_result(fal):
    fal.script("fail.zip", error="Not enough faces", error_type="image_error")
    request_id = _submit(fal, {"images_data_url": "https://example.com/fail.zip"}).json()[
        "request_id"
    ]

    import fal_client

    status = _client().status(ENDPOINT, request_id)
    assert (status.error, status.error_type) == ("Not enough faces", "image_error")
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        _client().result(ENDPOINT, request_id)
    assert raised.value.status_code == 422


def test_it_refuses_calls_without_a_key_and_serves_its_jwks_openly(fal):
    request_id = _submit(fal).json()["request_id"]
    denied = requests.get(
        f"{fal.base_url}/{ENDPOINT}/requests/{request_id}/status", verify=fal.cert_file
    )
    assert denied.status_code == 401
    keys = requests.get(fal.jwks_url, verify=fal.cert_file).json()["keys"]
    assert keys[0]["crv"] == "Ed25519"


def test_it_answers_unknown_requests_404_and_injects_errors_n_times(fal):
    import fal_client

    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        _client().status(ENDPOINT, "no-such-request")
    assert raised.value.status_code == 404

    request_id = _submit(fal).json()["request_id"]
    fal.script(request_id, status_error=500, status_error_times=1)
    with pytest.raises(fal_client.client.FalClientHTTPError):
        _client().status(ENDPOINT, request_id)
    assert isinstance(_client().status(ENDPOINT, request_id), fal_client.Completed)


def test_it_answers_cancel_like_fal(fal):
    fal.script(queue_seconds=60)
    running = _submit(fal).json()["request_id"]
    put = lambda rid: requests.put(  # noqa: E731
        f"{fal.base_url}/{ENDPOINT}/requests/{rid}/cancel",
        headers={"Authorization": "Key id:secret"},
        verify=fal.cert_file,
    )
    assert (put(running).status_code, fal.state_of(running)) == (202, "COMPLETED")
    assert (put(running).status_code, put(running).json()) == (400, {"status": "ALREADY_COMPLETED"})
    fal.script(queue_seconds=60, on_cancel="ignore")
    other = _submit(fal).json()["request_id"]
    assert (put(other).status_code, put(other).json()["status"]) == (202, "CANCELLATION_REQUESTED")
    assert put("unknown").json() == {"status": "NOT_FOUND"}


def test_it_posts_a_signed_webhook_when_a_job_ends_unless_dropped(fal):
    received: list[tuple[dict, bytes]] = []

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    sink = HTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{sink.server_address[1]}/webhooks/fal/"
        fal.script(run_seconds=0.1)
        delivered = _submit(fal, webhook=url).json()["request_id"]
        fal.script(run_seconds=60)
        dropped = _submit(fal, webhook=url).json()["request_id"]
        fal.drop_webhooks(dropped)
        fal.finish(dropped)
        deadline = time.monotonic() + 5
        while (not received or not fal.dropped_webhooks) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sink.shutdown()
    assert len(received) == 1
    headers, body = received[0]
    assert json.loads(body)["request_id"] == delivered and json.loads(body)["status"] == "OK"
    assert headers["X-Fal-Webhook-Request-Id"] == delivered
    assert [d["request_id"] for d in fal.dropped_webhooks] == [dropped]
