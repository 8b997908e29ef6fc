"""The shipped rules in a real Prometheus: it scrapes the live service with the metrics
token, the worker runs and nothing fires; the worker stops and its heartbeat alert
fires, as Prometheus' own HTTP API reports it.

The rules are a copy of ``deploy/prometheus/alerts.yml`` with every ``for:`` shortened
(the expressions untouched), scraped and evaluated every second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from monitoring.models import WorkerHeartbeat
from tests.support import free_port, wait_for
from tests.web_process import gunicorn
from tests.worker_process import qcluster

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/alerts.yml"
TOKEN = "live-scrape-token-0123456789"
PROMETHEUS = shutil.which("prometheus")
# The worker beats every 10 s; with 30 s a busy machine never makes a running worker late.
HEARTBEAT_LATE_SECONDS = 30

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="the prometheus binary is not installed here (Debian's prometheus package; "
        ".ci/run installs it)",
    ),
]


def short_rules(path: Path) -> Path:
    """A copy of the shipped rules with every ``for:`` at 1 s."""
    text, count = re.subn(r"(?m)^(\s+for:\s*)\S+$", r"\g<1>1s", RULES.read_text())
    assert count >= 8
    path.write_text(text)
    return path


@contextmanager
def prometheus(tmp_path: Path, web_port: int) -> Iterator[str]:
    """A real Prometheus on a loopback ephemeral port, scraping ``web_port``; its base URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(short_rules(tmp_path / "alerts.yml"))],
                "scrape_configs": [
                    {
                        "job_name": "avatar-monitor",
                        "metrics_path": "/metrics",
                        "authorization": {"type": "Bearer", "credentials": TOKEN},
                        "static_configs": [{"targets": [f"127.0.0.1:{web_port}"]}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or ready(base), 30, "Prometheus ready", log)
        assert process.poll() is None, log.read_text()[-3000:]
        yield base
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def api(base: str, path: str, **params: str) -> dict:
    url = f"{base}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def heartbeat_ages(base: str) -> dict[str, float]:
    """The roles' heartbeat ages in Prometheus' latest scrape."""
    result = api(base, "query", query="avatar_monitor_worker_heartbeat_age_seconds")["result"]
    return {item["metric"]["role"]: float(item["value"][1]) for item in result}


def evaluated(base: str) -> bool:
    """Whether every rule group has been evaluated (never: Go's zero time)."""
    return all(
        not group["lastEvaluation"].startswith("0001-") for group in api(base, "rules")["groups"]
    )


def worker_down_alerts(base: str) -> dict[str, dict]:
    return {
        alert["labels"]["role"]: alert
        for alert in api(base, "alerts")["alerts"]
        if alert["labels"]["alertname"] == "AvatarMonitorWorkerDown"
    }


def test_prometheus_fires_the_heartbeat_alert_once_the_worker_stops(tmp_path):
    server_env = {
        "METRICS_TOKEN": TOKEN,
        "WORKER_HEARTBEAT_LATE_SECONDS": str(HEARTBEAT_LATE_SECONDS),
    }
    worker_log = tmp_path / "qcluster.log"
    with (
        gunicorn(tmp_path / "gunicorn.log", **server_env) as (_server, web_port),
        qcluster(worker_log, Q_WORKERS="1") as worker,
    ):
        # The worker beats before Prometheus starts, so that nothing fires at first.
        wait_for(
            lambda: (
                set(WorkerHeartbeat.objects.values_list("role", flat=True))
                == {"checks", "notifications"}
            ),
            60,
            "both worker roles beating",
            worker_log,
        )
        with prometheus(tmp_path, web_port) as base:
            # Prometheus reads /metrics with the token and sees both roles beating, and
            # the rules, evaluated on what it scraped, fire nothing.
            wait_for(
                lambda: [t["health"] for t in api(base, "targets")["activeTargets"]] == ["up"],
                30,
                "the target up in Prometheus",
                tmp_path / "prometheus.log",
            )
            ages = wait_for(
                lambda: (
                    (found := heartbeat_ages(base)).keys() == {"checks", "notifications"} and found
                ),
                30,
                "the heartbeat ages in Prometheus",
            )
            assert max(ages.values()) < HEARTBEAT_LATE_SECONDS
            wait_for(
                lambda: evaluated(base) and worker_down_alerts(base) == {},
                10,
                "the rules evaluated, with no worker alert",
            )

            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)

            firing = wait_for(
                lambda: (
                    (
                        alerts := {
                            role: alert
                            for role, alert in worker_down_alerts(base).items()
                            if alert["state"] == "firing"
                        }
                    ).keys()
                    == {"checks", "notifications"}
                    and alerts
                ),
                HEARTBEAT_LATE_SECONDS + 60,
                "AvatarMonitorWorkerDown firing for both roles",
                tmp_path / "prometheus.log",
            )
    alert = firing["checks"]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["job"] == "avatar-monitor"
    assert alert["annotations"]["summary"] == "The worker's checks role has stopped beating"
    assert alert["annotations"]["runbook_url"] == "docs/operations.md#avatarmonitorworkerdown"
    # Prometheus computed it from the scraped age against the exported threshold.
    assert float(alert["value"]) > HEARTBEAT_LATE_SECONDS
