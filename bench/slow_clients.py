"""Benchmark: does /healthz still answer while slow clients hold connections open?

Each slow client opens a connection, sends a webhook request head announcing a
100 kB body, then trickles one byte of it every half second: the classic way to
hold a server's workers. While 0, 8 and 32 of them hold on, /healthz is asked
``--probes`` times, one request at a time, and its latency recorded (a probe that
takes more than 5 s counts as a timeout). Three set-ups, all with 2 gunicorn
workers on a scratch PostgreSQL database:

- ``sync``: the old command line (sync workers, 30 s timeout), as the baseline;
- ``gthread``: gunicorn.conf.py (threaded workers), clients straight to gunicorn;
- ``nginx``: gunicorn.conf.py behind nginx with deploy/nginx-proxy.conf (request
  buffering on), when an ``nginx`` binary is installed (Debian: ``nginx-light``).

    .venv/bin/python bench/slow_clients.py [--probes 20] [--hold 8,32]

Target (issue 12): with 8 and with 32 slow clients, /healthz answers within 1 s
behind the documented set-up (nginx + gunicorn.conf.py).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.scratch import (  # noqa: E402
    create_database,
    drop_database,
    free_port,
    production_env,
    stop_group,
)

PROBE_TIMEOUT = 5.0
TARGET_SECONDS = 1.0


class SlowClients:
    """``count`` connections that each send a body one byte every ``interval`` seconds."""

    def __init__(self, port: int, count: int, interval: float = 0.5):
        self.port, self.count, self.interval = port, count, interval
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._hold, daemon=True) for _ in range(count)]
        self.connected = 0
        self.lock = threading.Lock()

    def _hold(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            return
        with self.lock:
            self.connected += 1
        try:
            sock.sendall(
                b"POST /webhooks/fal/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            while not self.stop.wait(self.interval):
                sock.sendall(b" ")
        except OSError:
            pass  # the server gave up on us: that is its right
        finally:
            sock.close()

    def __enter__(self) -> SlowClients:
        for thread in self.threads:
            thread.start()
        time.sleep(1.5)  # let every one of them get its head in
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)


def probe(port: int, count: int) -> dict:
    latencies, timeouts, statuses = [], 0, {}
    for _ in range(count):
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
            conn.request("GET", "/healthz", headers={"Host": "127.0.0.1"})
            response = conn.getresponse()
            response.read()
            conn.close()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)
        except OSError:
            timeouts += 1
        time.sleep(0.1)
    ordered = sorted(latencies)
    return {
        "answered": len(latencies),
        "timeouts": timeouts,
        "p50_ms": statistics.median(ordered) * 1000 if ordered else None,
        "max_ms": ordered[-1] * 1000 if ordered else None,
        "statuses": statuses,
    }


def _wait_for(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: see {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz", headers={"Host": "127.0.0.1"})
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on {port} did not answer within 30 s: see {log}")


def start_gunicorn(kind: str, env: dict[str, str], work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    if kind == "sync":
        # What bin/docker-entrypoint ran before gunicorn.conf.py.
        command = [gunicorn, "avatarsite.wsgi:application", "--workers", "2", "--timeout", "30"]
    else:
        command = [gunicorn, "avatarsite.wsgi:application", "--config", "gunicorn.conf.py"]
    command += ["--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"]
    log = work / f"gunicorn-{kind}.log"
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**env, "WEB_CONCURRENCY": "2", "GUNICORN_ACCESS_LOG": "/dev/null"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait_for(port, process, log)
    return process, port


def start_nginx(upstream: int, work: Path) -> tuple[subprocess.Popen, int] | None:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if binary is None:
        return None
    port = free_port()
    prefix = work / "nginx"
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / name).mkdir(parents=True, exist_ok=True)
        os.chmod(prefix / name, 0o777)
    # The production server block's limits (deploy/nginx.conf) without TLS, and its
    # proxy settings included verbatim.
    config = prefix / "nginx.conf"
    config.write_text(
        f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream avatars_web {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 2m;
        client_body_buffer_size 1m;
        client_header_timeout 10s;
        client_body_timeout 10s;
        send_timeout 30s;
        keepalive_timeout 30s;
        location / {{
            include {ROOT / "deploy" / "nginx-proxy.conf"};
            proxy_pass http://avatars_web;
        }}
    }}
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(config)],
        stdout=(prefix / "stdout.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait_for(port, process, prefix / "error.log")
    return process, port


def measure(label: str, port: int, holds: list[int], probes: int) -> list[tuple]:
    rows = []
    for count in [0, *holds]:
        with SlowClients(port, count) as slow:
            figures = probe(port, probes)
        rows.append((label, count, slow.connected, figures))
        print(_line(rows[-1]), flush=True)
    return rows


def _line(row: tuple) -> str:
    label, count, connected, f = row
    p50 = f"{f['p50_ms']:.1f}" if f["p50_ms"] is not None else "-"
    worst = f"{f['max_ms']:.1f}" if f["max_ms"] is not None else "-"
    return (
        f"{label:28}{count:>6}{connected:>11}{f['answered']:>10}{f['timeouts']:>10}"
        f"{p50:>10}{worst:>10}  {f['statuses']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=20, help="/healthz requests per row")
    parser.add_argument("--hold", default="8,32", help="slow client counts, comma-separated")
    parser.add_argument("--skip-sync", action="store_true", help="leave out the sync baseline")
    args = parser.parse_args(argv)
    holds = [int(n) for n in args.hold.split(",") if n]

    server_url = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
    db_name, db_url = create_database(server_url, "bench_slow")
    work = Path(tempfile.mkdtemp(prefix="bench-slow-"))
    env = production_env(db_url, PUBLIC_BASE_URL="https://127.0.0.1")
    processes: list[subprocess.Popen] = []
    rows: list[tuple] = []
    try:
        migrated = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if migrated.returncode:
            raise SystemExit(f"migrate failed:\n{migrated.stderr}")
        print(f"load: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)")
        header = (
            f"{'set-up':28}{'slow':>6}{'connected':>11}{'answered':>10}{'timeouts':>10}"
            f"{'p50 ms':>10}{'max ms':>10}  statuses"
        )
        print(header, flush=True)
        if not args.skip_sync:
            sync, sync_port = start_gunicorn("sync", env, work)
            processes.append(sync)
            rows += measure("sync workers (old)", sync_port, holds, args.probes)
            stop_group(sync)
        gthread, port = start_gunicorn("gthread", env, work)
        processes.append(gthread)
        rows += measure("gunicorn.conf.py (gthread)", port, holds, args.probes)
        nginx = start_nginx(port, work)
        if nginx is None:
            print("nginx: not installed here (apt-get install nginx-light); row left out")
        else:
            processes.append(nginx[0])
            rows += measure("nginx + gunicorn.conf.py", nginx[1], holds, args.probes)
    finally:
        for process in reversed(processes):
            stop_group(process)
        drop_database(server_url, db_name)
    print(f"load after: {os.getloadavg()[0]:.2f}")

    documented = [r for r in rows if r[0].startswith("nginx")] or [
        r for r in rows if r[0].startswith("gunicorn.conf")
    ]
    met = all(
        r[3]["timeouts"] == 0 and r[3]["max_ms"] is not None and r[3]["max_ms"] <= 1000
        for r in documented
        if r[1] in holds
    )
    print(
        f"  {'met ' if met else 'MISSED'} /healthz within {TARGET_SECONDS:.0f} s with "
        f"{' and '.join(map(str, holds))} slow clients behind {documented[0][0]}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
