"""gunicorn.conf.py is what the web role runs, and the nginx snippet buffers requests."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_web_role_runs_gunicorn_with_the_repository_config():
    entrypoint = (ROOT / "bin" / "docker-entrypoint").read_text()

    assert "--config gunicorn.conf.py" in entrypoint


def test_gunicorn_uses_threads_short_timeouts_and_keep_alive(monkeypatch):
    for name in ("GUNICORN_THREADS", "GUNICORN_TIMEOUT", "GUNICORN_KEEPALIVE", "PORT"):
        monkeypatch.delenv(name, raising=False)

    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))

    assert config["worker_class"] == "gthread" and config["threads"] >= 4
    assert config["timeout"] <= 30 and config["graceful_timeout"] < 10
    assert 0 < config["keepalive"] <= 10
    assert config["bind"] == "0.0.0.0:8000"


def test_the_nginx_snippet_buffers_whole_requests_and_bounds_slow_clients():
    proxy = (ROOT / "deploy" / "nginx-proxy.conf").read_text()
    server = (ROOT / "deploy" / "nginx.conf").read_text()

    assert "proxy_request_buffering on;" in proxy
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in proxy  # the last hop is the client
    assert "client_body_timeout 10s;" in server and "client_max_body_size 2m;" in server
