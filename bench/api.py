"""Benchmark: the bot's API through gunicorn on PostgreSQL.

What it measures, in one run:

1. ``GET /api/v1/avatars/{id}`` req/s and p50/p99 with 16 concurrent clients, against
   a minimal authenticated view (the same bearer-token lookup, one avatar row read,
   a small JSON answer) as the baseline the ratio is computed against. The two loads
   alternate in rounds so that whatever else the machine does weighs on both alike.
2. ``POST /api/v1/trainings`` latency (one client, one request at a time) against the
   fal emulator over HTTPS: idempotency key, owner and avatar, the submit, the answer.
   Its baseline is the bare submit: the same POST sent straight to the emulator.

Everything is its own: a fresh database (dropped at the end), the emulator, gunicorn
(2 sync workers, as in production). Nothing leaves 127.0.0.1.

    .venv/bin/python bench/api.py [--requests 4000] [--clients 16] [--starts 100]

This module is also the bench-only URLconf and WSGI app gunicorn loads
(``bench.api:wsgi()``): the production routes plus ``/bench/minimal-api/<id>``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
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
    submit_through_transitions,
)

MINIMAL_PATH = "/bench/minimal-api/"
API_PATH = "/api/v1/avatars/"


# --- what gunicorn loads -------------------------------------------------------------------


def minimal(request, avatar_id: int):
    """The baseline: the same token check, one avatar row, a small JSON answer."""
    from django.http import JsonResponse

    from monitoring.api import tokens
    from monitoring.models import Avatar

    header = request.headers.get("Authorization", "")
    client = tokens.authenticate(header.removeprefix("Bearer ").strip())
    if client is None:
        return JsonResponse({"error": "unauthorized"}, status=401)
    row = Avatar.objects.filter(pk=avatar_id).values("id", "name", "status").first()
    if row is None:
        return JsonResponse({"error": "not_found"}, status=404)
    return JsonResponse({**row, "id": str(row["id"])})


def __getattr__(name: str):
    if name == "urlpatterns":
        from django.urls import path

        from avatarsite.urls import urlpatterns as production

        return [path(MINIMAL_PATH.strip("/") + "/<int:avatar_id>", minimal), *production]
    raise AttributeError(name)


def wsgi():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "avatarsite.settings")
    from django.conf import settings

    settings.ROOT_URLCONF = __name__
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


# --- load ----------------------------------------------------------------------------------


def _request(port: int, method: str, path: str, headers: dict, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _load_process(port, paths, threads, token, barrier, results) -> None:
    lock = threading.Lock()
    items = iter(paths)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {token}"}

    def client() -> None:
        while True:
            with lock:
                path = next(items, None)
            if path is None:
                return
            started = time.perf_counter()
            try:
                status, _ = _request(port, "GET", path, headers)
            except OSError:
                status = 599
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

    barrier.wait()
    started = time.time()
    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((started, time.time(), latencies, statuses))


def run_get_load(port: int, paths: list[str], clients: int, token: str, processes: int = 4):
    processes = max(1, min(processes, clients))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    results = context.Queue()
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        context.Process(
            target=_load_process,
            args=(port, paths[i::processes], per[i], token, barrier, results),
        )
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    gathered = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    statuses: dict[int, int] = {}
    for g in gathered:
        for status, count in g[3].items():
            statuses[status] = statuses.get(status, 0) + count
    return {
        "seconds": max(g[1] for g in gathered) - min(g[0] for g in gathered),
        "latencies": [lat for g in gathered for lat in g[2]],
        "statuses": statuses,
    }


def summary(parts: list[dict]) -> dict:
    latencies = sorted(lat for part in parts for lat in part["latencies"])
    statuses: dict[int, int] = {}
    for part in parts:
        for status, count in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    seconds = sum(part["seconds"] for part in parts)
    return {
        "requests": len(latencies),
        "per_second": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "statuses": dict(sorted(statuses.items())),
    }


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (
        statistics.median(ordered) * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


# --- set-up --------------------------------------------------------------------------------


def _make_avatars(count: int) -> list[int]:
    """Avatars with a finished attempt each (what the bot reads most), via the transitions."""
    from monitoring import transitions
    from monitoring.api.models import ApiClient, ClientAvatar
    from monitoring.models import EventSource

    client = ApiClient.objects.get(name="bench bot")
    trainings = submit_through_transitions(
        count,
        first_telegram_id=700_000,
        endpoint="fal-ai/x",
        request_id=lambda i: f"bench-{i}",
        owners=20,
    )
    for training in trainings:
        ClientAvatar.objects.create(avatar_id=training.avatar_id, client=client)
        transitions.complete(training, lora_url="https://x/l.safetensors", source=EventSource.CHECK)
    return [t.avatar_id for t in trainings]


def _start_gunicorn(port: int, env: dict[str, str], log_dir: Path, token: str, probe: int):
    gunicorn = Path(sys.executable).with_name("gunicorn")
    output = open(log_dir / "server.log", "ab")  # noqa: SIM115 (lives as long as the server)
    process = __import__("subprocess").Popen(
        [
            str(gunicorn),
            "bench.api:wsgi()",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--timeout",
            "60",
            "--error-logfile",
            str(log_dir / "error.log"),
        ],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=output,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited: see {log_dir / 'error.log'}")
        try:
            status, _ = _request(port, "GET", f"{MINIMAL_PATH}{probe}", headers)
            if status == 200:
                return process
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not answer within 30 s")


def _bare_submit(emulator, ca_file: str) -> float:
    """One submit POST straight to the emulator (a new TLS connection, as the server makes)."""
    import ssl

    context = ssl.create_default_context(cafile=ca_file)
    body = json.dumps({"images_data_url": "https://example.com/p.zip", "trigger_phrase": "bare"})
    started = time.perf_counter()
    conn = http.client.HTTPSConnection("127.0.0.1", emulator.port, context=context, timeout=30)
    try:
        conn.request(
            "POST",
            "/fal-ai/flux-lora-portrait-trainer",
            body=body,
            headers={"Authorization": "Key bench-key-id:bench-key-secret"},
        )
        conn.getresponse().read()
    finally:
        conn.close()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="GETs per load")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--avatars", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--starts", type=int, default=100, help="POST /api/v1/trainings calls")
    args = parser.parse_args(argv)

    server_url = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
    db_name, db_url = create_database(server_url, "bench_api")
    work_dir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    from fakes.fal_emulator import FalEmulator

    emulator = FalEmulator(state_dir=work_dir / "fal", deliver_webhooks=False).start()
    gunicorn = None
    env = production_env(
        db_url,
        **emulator.env(),
        NOTIFICATION_BACKEND="locmem",
        # The limit is counted on every call as in production, but never reached here.
        API_RATE_LIMIT_PER_MINUTE="10000000",
    )
    try:
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        from monitoring.api import tokens

        call_command("migrate", verbosity=0)
        token = tokens.create_client(
            name="bench bot", scopes=["trainings:write", "avatars:read", "avatars:all"]
        ).token
        print(f"database {db_name} migrated; creating {args.avatars} avatars …", flush=True)
        ids = _make_avatars(args.avatars)
        connections.close_all()

        port = free_port()
        gunicorn = _start_gunicorn(port, env, work_dir, token, ids[0])
        paths_api = [f"{API_PATH}{ids[i % len(ids)]}" for i in range(args.requests)]
        paths_min = [f"{MINIMAL_PATH}{ids[i % len(ids)]}" for i in range(args.requests)]
        warm_up = paths_api[:300]
        run_get_load(port, paths_min[:300], args.clients, token)
        run_get_load(port, warm_up, args.clients, token)
        rounds = []
        size = -(-args.requests // args.rounds)
        for start in range(0, args.requests, size):
            rounds.append(
                (
                    run_get_load(port, paths_min[start : start + size], args.clients, token),
                    run_get_load(port, paths_api[start : start + size], args.clients, token),
                )
            )
        baseline = summary([r[0] for r in rounds])
        api = summary([r[1] for r in rounds])
        sent_api = len(warm_up) + sum(sum(r[1]["statuses"].values()) for r in rounds)

        # POST /api/v1/trainings, one at a time, alternating with the bare submit.
        starts, bare, statuses = [], [], {}
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for i in range(args.starts):
            bare.append(_bare_submit(emulator, emulator.cert_file))
            body = json.dumps(
                {
                    "owner": {"telegram_id": 800_000 + i},
                    "name": f"bench start {i}",
                    "images_url": "https://example.com/p.zip",
                    "training_type": "portrait",
                    "trigger": "ohwx",
                }
            ).encode()
            started = time.perf_counter()
            status, answer = _request(
                port,
                "POST",
                "/api/v1/trainings",
                {**headers, "Idempotency-Key": uuid.uuid4().hex},
                body,
            )
            starts.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        submitted = sum(1 for s in emulator.submissions if s["payload"]["trigger_phrase"] == "ohwx")
        stop_group(gunicorn)
        from monitoring.api.models import ApiCall

        # Every API call is in the call log once the server has stopped (the audit trail
        # the speed must not cost: batches are written at the latest on exit).
        recorded = ApiCall.objects.filter(path__startswith=API_PATH, method="GET").count()
        connections.close_all()
    finally:
        if gunicorn is not None:
            stop_group(gunicorn)
        emulator.stop()
        drop_database(server_url, db_name)

    print()
    print(
        f"gunicorn 2 sync workers, PostgreSQL, {args.clients} concurrent clients, "
        f"{args.requests} GETs per load over {args.avatars} avatars, {len(rounds)} rounds"
    )
    print(f"{'':34}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    for label, figures in (
        ("minimal authenticated view", baseline),
        ("GET /api/v1/avatars/{id}", api),
    ):
        print(
            f"{label:34}{figures['per_second']:>8.0f}{figures['p50_ms']:>9.1f}"
            f"{figures['p99_ms']:>9.1f}  {figures['statuses']}"
        )
    print(f"ratio API/minimal req/s: {api['per_second'] / baseline['per_second']:.2f}")
    print(f"API GETs in the call log after the server stopped: {recorded} of {sent_api}")
    p50, p99 = _percentiles(starts)
    b50, b99 = _percentiles(bare)
    print(
        f"POST /api/v1/trainings, one at a time ({args.starts} calls, statuses {statuses}, "
        f"{submitted} submits reached the emulator): p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"bare submit to the emulator: p50 {b50:.1f} ms, p99 {b99:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
