"""Fixtures for fal: the queue emulator over HTTPS and webhook signing (engine issue).

``fal_emulator`` (session) starts one emulator per test process and points the real
fal-client at it through its own settings: FAL_QUEUE_RUN_HOST (read when fal_client
is first imported, which nothing does at module level) and SSL_CERT_FILE (httpx).
``fal`` (per test) hands out the same emulator with every script, counter and
recorded delivery reset, and points ``settings.FAL_WEBHOOK_JWKS_URL`` at it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

from fakes.fal_emulator import FalEmulator


@pytest.fixture(scope="session")
def fal_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalEmulator]:
    emulator = FalEmulator(state_dir=tmp_path_factory.mktemp("fal-emulator")).start()
    if "fal_client" in sys.modules:
        from fal_client import client

        if client.QUEUE_URL_FORMAT != f"https://{emulator.host}/":
            emulator.stop()
            pytest.fail(
                "fal_client was imported before the fal_emulator fixture set "
                "FAL_QUEUE_RUN_HOST: import it lazily (inside functions)"
            )
    # SSL_CERT_FILE replaces the CA bundle of every httpx client in this process:
    # keep certifi's roots in it so nothing else loses TLS. Other fakes append theirs.
    bundle = Path(emulator.cert_file).with_name("ca-bundle.pem")
    bundle.write_text(
        Path(certifi.where()).read_text() + "\n" + Path(emulator.cert_file).read_text()
    )
    saved = {name: os.environ.get(name) for name in ("FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE")}
    os.environ["FAL_QUEUE_RUN_HOST"] = emulator.host
    os.environ["SSL_CERT_FILE"] = str(bundle)
    emulator.ca_bundle = str(bundle)
    yield emulator
    emulator.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def fal(fal_emulator: FalEmulator, settings) -> Iterator[FalEmulator]:
    """The emulator with a clean slate for this test."""
    fal_emulator.reset()
    fal_emulator.deliver_webhooks = True
    fal_emulator.status_latency = 0.0
    settings.FAL_WEBHOOK_JWKS_URL = fal_emulator.jwks_url
    settings.FAL_PLATFORM_API_URL = fal_emulator.platform_url
    yield fal_emulator
    fal_emulator.reset()


def submit_directly(emulator: FalEmulator, endpoint: str, arguments: dict) -> str:
    """Submit a job to the emulator the way another script with our key would (not us)."""
    import requests

    response = requests.post(
        f"{emulator.base_url}/{endpoint}",
        json=arguments,
        headers={"Authorization": "Key someone-else:same-account-key"},
        verify=emulator.ca_bundle,
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["request_id"]
