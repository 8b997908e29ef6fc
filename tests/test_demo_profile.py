"""The local demo: ./bin/manage trusts the emulator whatever the shell exports, says only
what matters, and the emulator keeps its jobs across a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support import user_shell

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "fal-ai/flux-lora-portrait-trainer"


def _local_env(state_dir: Path, lines: list[str]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "local.env").write_text("\n".join(lines) + "\n")


def _manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "bin" / "manage"), *args],
        cwd=tmp_path,
        env={**user_shell(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_uses_the_emulators_certificate_whatever_the_shell_exports(tmp_path):
    state = tmp_path / "var"
    emulator_cert = str(state / "demo" / "tls" / "cert.pem")
    _local_env(
        state,
        [
            "DEBUG=1",
            "PUBLIC_BASE_URL=http://127.0.0.1:8000",
            f"SSL_CERT_FILE={emulator_cert}",
            f"REQUESTS_CA_BUNDLE={emulator_cert}",
            "FAL_QUEUE_RUN_HOST=127.0.0.1:4443",
            "STUCK_IN_QUEUE_MINUTES=2",
            r"DEMO_OVERRIDES=SSL_CERT_FILE\ REQUESTS_CA_BUNDLE\ FAL_QUEUE_RUN_HOST",
            "SILENCED_SYSTEM_CHECKS=avatarsite.W003,avatarsite.W004",
            "EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS=1",
        ],
    )
    shown = _manage(
        tmp_path,
        "shell",
        "-c",
        "import os; print(os.environ['SSL_CERT_FILE'], os.environ['REQUESTS_CA_BUNDLE'],"
        " os.environ['STUCK_IN_QUEUE_MINUTES'])",
        SSL_CERT_FILE="/etc/ssl/certs/ca-certificates.crt",
        REQUESTS_CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt",
        STUCK_IN_QUEUE_MINUTES="7",
    )
    assert shown.returncode == 0, shown.stderr
    # The emulator's bundle wins; any other setting of the shell still wins over the file.
    assert shown.stdout.strip().splitlines()[-1].split() == [emulator_cert, emulator_cert, "7"]
    # Only what matters for a demo: plain http and the printed messages are the demo's
    # choice, and a callback receiver on this machine is allowed.
    assert "avatarsite.W003" not in shown.stderr and "avatarsite.W004" not in shown.stderr
    allowed = _manage(
        tmp_path,
        "shell",
        "-c",
        "from django.conf import settings; print(settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS)",
    )
    assert allowed.stdout.strip().splitlines()[-1] == "True", allowed.stderr


def _start_emulator(state_dir: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    env_file = state_dir / "emulator.env"
    process = subprocess.Popen(
        [sys.executable, "-m", "fakes.fal_emulator", "--state-dir", str(state_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not env_file.exists():
        assert time.monotonic() < deadline, "the emulator did not start"
        time.sleep(0.1)
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    return process, values


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def _status(values: dict[str, str], request_id: str) -> requests.Response:
    return requests.get(
        f"https://{values['FAL_QUEUE_RUN_HOST']}/{ENDPOINT}/requests/{request_id}/status",
        headers={"Authorization": "Key id:secret"},
        verify=values["SSL_CERT_FILE"],
        timeout=5,
    )


def test_the_emulator_keeps_its_jobs_across_a_demo_restart(tmp_path):
    state = tmp_path / "demo"
    process, values = _start_emulator(state)
    try:
        submitted = requests.post(
            f"https://{values['FAL_QUEUE_RUN_HOST']}/{ENDPOINT}",
            json={"images_data_url": "https://example.com/stuck.zip"},
            headers={"Authorization": "Key id:secret"},
            verify=values["SSL_CERT_FILE"],
            timeout=5,
        )
        request_id = submitted.json()["request_id"]
        assert _status(values, request_id).json()["status"] == "IN_QUEUE"
    finally:
        _stop(process)
    assert (state / "jobs.json").exists()

    process, values = _start_emulator(state)
    try:
        again = _status(values, request_id)
        # Still waiting in the queue: a restart never turns a training into "unknown".
        assert again.status_code in (200, 202), again.text
        assert again.json()["status"] == "IN_QUEUE"
    finally:
        _stop(process)
    assert os.path.exists(state / "jobs.json")
