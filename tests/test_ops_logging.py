"""JSON logs (LOG_FORMAT=json) and Sentry events, both redacted like the text logs."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from avatarsite.log_redaction import JsonFormatter, RedactSecrets
from monitoring import transitions
from monitoring.models import EventSource

ROOT = Path(__file__).resolve().parent.parent
FAL_KEY = "test-key-id:test-key-secret-value"  # tests/settings.py


@pytest.fixture
def json_lines():
    """What the ``monitoring`` logger writes through the JSON formatter, line by line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("monitoring")
    logger.addHandler(handler)
    try:
        yield lambda: stream.getvalue().splitlines()
    finally:
        logger.removeHandler(handler)


@pytest.mark.django_db
def test_a_completion_logs_one_json_object_with_the_russian_text_unescaped_and_both_ids(
    json_lines, training_avatar
):
    avatar, training = training_avatar("req-json-1")
    transitions.complete(
        training, lora_url="https://v3.fal.media/l.safetensors", source=EventSource.WEBHOOK
    )

    lines = [line for line in json_lines() if "Обучение завершено" in line]
    assert len(lines) == 1  # grep finds it: the UTF-8 is not \u-escaped
    record = json.loads(lines[0])
    assert record["message"] == (
        f"🎉 Обучение завершено для аватара {avatar.pk} (request_id=req-json-1, source=webhook)"
    )
    assert record["avatar_id"] == avatar.pk
    assert record["request_id"] == "req-json-1"
    assert record["level"] == "INFO" and record["logger"] == "monitoring"
    assert record["timestamp"].endswith("+00:00")
    started = [json.loads(line) for line in json_lines() if "Мониторинг запущен" in line]
    assert started[0]["avatar_id"] == avatar.pk and started[0]["request_id"] == "req-json-1"


def test_json_lines_redact_secrets_in_tracebacks_and_extra_fields(json_lines):
    logger = logging.getLogger("monitoring")
    try:
        raise RuntimeError(f"fal refused key {FAL_KEY}")
    except RuntimeError:
        logger.exception("call failed", extra={"url": f"https://x/?key={FAL_KEY}"})
    text = "\n".join(json_lines())
    assert "test-key-secret-value" not in text
    record = json.loads(json_lines()[-1])
    assert "[redacted]" in record["exc_info"] and "RuntimeError" in record["exc_info"]
    assert record["url"] == "https://x/?key=[redacted]"


def _run_django(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` after django.setup() with the test settings and this environment."""
    full_env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    script = "import django, logging\ndjango.setup()\nfrom django.conf import settings\n" + code
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_log_format_json_switches_stderr_and_text_stays_as_it_was():
    code = (
        "logging.getLogger('monitoring').info('🎉 Обучение завершено для аватара %s', 7,"
        " extra={'avatar_id': 7, 'request_id': 'req-7'})\n"
    )
    as_json = _run_django(code, LOG_FORMAT="json")
    assert as_json.returncode == 0, as_json.stderr
    (line,) = as_json.stderr.splitlines()
    assert json.loads(line)["message"] == "🎉 Обучение завершено для аватара 7"
    assert json.loads(line)["avatar_id"] == 7

    as_text = _run_django(code)
    assert as_text.returncode == 0, as_text.stderr
    (line,) = as_text.stderr.splitlines()
    assert line.endswith(" INFO monitoring 🎉 Обучение завершено для аватара 7")

    wrong = _run_django("", LOG_FORMAT="yaml")
    assert wrong.returncode != 0 and "LOG_FORMAT must be text or json" in wrong.stderr


class _SentryIngest(BaseHTTPRequestHandler):
    """A Sentry ingest endpoint on loopback: keeps every envelope it is sent."""

    envelopes: list[list[dict]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        items = []
        for line in body.splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:
                continue
        self.envelopes.append(items)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def sentry_ingest():
    _SentryIngest.envelopes = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SentryIngest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://publickey@127.0.0.1:{server.server_port}/42", _SentryIngest.envelopes
    server.shutdown()


def test_sentry_events_leave_the_process_with_secrets_redacted(sentry_ingest):
    dsn, envelopes = sentry_ingest
    code = (
        "def call_fal(key=settings.FAL_KEY):\n"
        "    raise RuntimeError('fal refused ' + key)\n"
        "try:\n"
        "    call_fal()\n"
        "except RuntimeError:\n"
        "    logging.getLogger('monitoring').exception('call with %s failed', settings.FAL_KEY)\n"
        "import sentry_sdk\n"
        "sentry_sdk.flush(5)\n"
    )
    result = _run_django(code, SENTRY_DSN=dsn)
    assert result.returncode == 0, result.stderr

    events = [item for envelope in envelopes for item in envelope if "exception" in item]
    assert len(events) == 1, envelopes
    sent = json.dumps(events[0])
    assert "test-key-secret-value" not in sent
    (exception,) = events[0]["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == "fal refused [redacted]"
    assert events[0]["logentry"]["formatted"] == "call with [redacted] failed"


def test_a_malformed_dsn_stops_start_up_naming_the_variable():
    result = _run_django("", SENTRY_DSN="not-a-dsn")
    assert result.returncode != 0
    assert "SENTRY_DSN is not a valid Sentry DSN" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("METRICS_TOKEN", "short", "METRICS_TOKEN must be at least 16 characters"),
        ("METRICS_ALLOWED_IPS", "10.0.0.0/8,office", "METRICS_ALLOWED_IPS must list IP addresses"),
        ("SENTRY_TRACES_SAMPLE_RATE", "2", "SENTRY_TRACES_SAMPLE_RATE must be between 0 and 1"),
    ],
)
def test_bad_operations_settings_stop_start_up_naming_the_variable(name, value, message):
    result = _run_django("", **{name: value})
    assert result.returncode != 0
    assert message in result.stderr
