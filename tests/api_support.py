"""Fixtures for the bot API tests: clients with tokens, and a loopback callback receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client
from django.utils import timezone

from monitoring import tasks
from monitoring.api import tokens
from monitoring.models import Training

# A valid POST /api/v1/trainings body.
BODY = {
    "owner": {"telegram_id": 555000111, "username": "anna", "language": "en"},
    "name": "Anna portrait",
    "images_url": "https://example.com/anna.zip",
    "training_type": "portrait",
    "trigger": "ohwx woman",
    "settings": {"steps": 500},
}


def body(**changes) -> dict:
    return {**json.loads(json.dumps(BODY)), **changes}


def give(avatar, owner) -> None:
    """Make ``avatar`` (made by staff) one of a client's, as if that client had created it.

    ``owner``: an ``ApiSession`` or an ``ApiClient``. Clients see only their own avatars.
    """
    from monitoring.api.models import ApiClient, ClientAvatar

    client = owner if isinstance(owner, ApiClient) else owner.client
    ClientAvatar.objects.update_or_create(avatar=avatar, defaults={"client": client})


def run_check() -> None:
    """A periodic check run with every active training due."""
    Training.objects.filter(finished_at__isnull=True).update(
        next_check_at=timezone.now() - timedelta(seconds=1)
    )
    tasks.run_check()


def run_callbacks() -> list[str]:
    """Run the event-callback tasks really queued on the broker, the way a worker would."""
    from django.conf import settings
    from django.utils.module_loading import import_string
    from django_q.models import OrmQ

    from monitoring.api import callbacks

    results = []
    for package in OrmQ.objects.filter(key=settings.Q_CLUSTER["name"]).order_by("id"):
        task = package.task
        if task["func"] == callbacks.TASK:
            package.delete()
            results.append(import_string(task["func"])(*task["args"], **task["kwargs"]))
    return results


class ApiSession:
    """Django's test client with a client's bearer token on every request."""

    def __init__(self, made: tokens.NewClient) -> None:
        self.made = made
        self.client = made.client
        self.token = made.token
        self.http = Client()

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(headers or {})}

    def get(self, path: str, headers: dict[str, str] | None = None, **params):
        return self.http.get(path, params, headers=self._headers(headers))

    def post(self, path: str, body=None, *, key: str | None = None, headers=None, raw=None):
        extra = self._headers(headers)
        if key is not None:
            extra["Idempotency-Key"] = key
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.http.post(path, data, content_type="application/json", headers=extra)


@pytest.fixture
def make_api_client(db):
    def make(
        name: str = "bot",
        scopes: tuple[str, ...] = ("trainings:write", "avatars:read"),
        callback_url: str = "",
        callback_stuck: bool = False,
    ) -> ApiSession:
        return ApiSession(
            tokens.create_client(
                name=name,
                scopes=list(scopes),
                callback_url=callback_url,
                callback_stuck=callback_stuck,
            )
        )

    return make


@pytest.fixture
def bot(make_api_client) -> ApiSession:
    return make_api_client()


class Receiver:
    """A real HTTP server on 127.0.0.1 that records each POST and answers ``statuses``."""

    def __init__(self, tls_dir=None) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.delay = 0.0  # seconds between recording a POST and answering it
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status = receiver.statuses.pop(0) if receiver.statuses else 204
                time.sleep(receiver.delay)
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "120")
                if status in (301, 302):
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme, self.cert_file = "http", ""
        if tls_dir is not None:
            import ssl

            from fakes.tls import make_self_signed_cert

            cert, key = make_self_signed_cert(tls_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme, self.cert_file = "https", str(cert)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.server.server_address[1]}/hooks/avatars"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = True
    settings.EVENT_CALLBACK_TIMEOUT_SECONDS = 2.0
    server = Receiver().start()
    yield server
    server.stop()
