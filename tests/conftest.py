"""Shared fixtures: data built in code, fakes of the outside systems on loopback."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from monitoring import transitions
from monitoring.models import Avatar, EventSource, Owner, TrainingType

# Fakes of the outside systems, one plugin module each.
pytest_plugins = ["tests.fixtures_fal", "tests.fixtures_telegram", "tests.api_support"]

_telegram_ids = itertools.count(100_000)


@pytest.fixture(autouse=True)
def back_to_the_default_language():
    """A request in Russian leaves Russian active in the thread (LocaleMiddleware does not
    reset it): without this, a later test in the same worker would read Russian texts."""
    from django.utils import translation

    yield
    translation.deactivate()


@pytest.fixture(autouse=True)
def fresh_signing_keys():
    """Each test starts like a freshly started web worker: no fal signing keys in memory."""
    from monitoring.fal import signing_keys

    signing_keys.forget()
    yield
    signing_keys.forget()


@pytest.fixture
def deliver(fal, client):
    """POST a webhook delivery to our intake, signed by the emulator's key unless
    ``headers`` are given; returns the response."""
    from tests.support import WEBHOOK_URL

    def post(body: bytes, request_id: str | None = None, *, headers: dict | None = None, **kw):
        if headers is None:
            rid = request_id or json.loads(body)["request_id"]
            headers = fal.signer.headers(body, rid)
        return client.post(
            WEBHOOK_URL, data=body, content_type="application/json", headers=headers, **kw
        )

    return post


@pytest.fixture
def metrics_on(settings):
    """/metrics served to ``tests.support.METRICS_TOKEN`` from any address."""
    from tests.support import METRICS_TOKEN

    settings.METRICS_TOKEN = METRICS_TOKEN
    settings.METRICS_ALLOWED_IPS = []


@pytest.fixture
def make_owner(db):
    def make(**fields) -> Owner:
        fields.setdefault("telegram_id", next(_telegram_ids))
        fields.setdefault("username", f"user{fields['telegram_id']}")
        return Owner.objects.create(**fields)

    return make


@pytest.fixture
def owner(make_owner) -> Owner:
    return make_owner(display_name="Анна")


@pytest.fixture
def make_avatar(make_owner):
    def make(*, owner: Owner | None = None, ready: bool = True, **fields) -> Avatar:
        avatar = Avatar(
            owner=owner or make_owner(),
            name=fields.pop("name", "Аватар"),
            training_type=fields.pop("training_type", TrainingType.PORTRAIT),
            trigger_word=fields.pop("trigger_word", "ohwx person"),
            images_url=fields.pop("images_url", "https://example.com/photos.zip"),
            **fields,
        )
        return transitions.create_avatar(avatar, ready=ready, source=EventSource.COMMAND)

    return make


@pytest.fixture
def started(fal, make_avatar):
    """Start a new avatar on the fal emulator; returns (avatar, training)."""
    from monitoring.trainings import start_training

    def start(**avatar_fields):
        avatar = make_avatar(**avatar_fields)
        outcome = start_training(avatar, source=EventSource.COMMAND)
        assert outcome.training is not None and outcome.training.fal_request_id, outcome
        avatar.refresh_from_db()
        return avatar, outcome.training

    return start


@pytest.fixture
def training_avatar(make_avatar):
    """An avatar in ``training`` with a submitted attempt (no fal involved)."""

    def make(request_id: str = "req-1", **fields):
        avatar = make_avatar(**fields)
        started = transitions.begin_training(
            avatar,
            endpoint="fal-ai/flux-lora-portrait-trainer",
            arguments={},
            webhook_url="",
            source=EventSource.COMMAND,
        )
        transitions.record_submitted(
            started.training, request_id=request_id, source=EventSource.COMMAND
        )
        started.training.refresh_from_db()
        return avatar, started.training

    return make


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A throwaway redis-server on loopback (the shared-limits store when REDIS_URL is set)."""
    import shutil
    import socket
    import subprocess

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip PostgreSQL-only tests (real-thread races, server features) on SQLite."""
    if item.get_closest_marker("postgres"):
        from django.db import connection

        if connection.vendor != "postgresql":
            pytest.skip(f"needs PostgreSQL; this run uses {connection.vendor}")
