"""Benchmark: signed fal webhook deliveries through gunicorn on PostgreSQL.

What it measures: deliveries per second and p50/p99 latency of ``POST /webhooks/fal/``
served by gunicorn (2 workers with the repository's gunicorn.conf.py: gthread, as in
production) on PostgreSQL, with 16
concurrent clients sending a mix of first deliveries (each completes an avatar and
queues its notification) and duplicates (exact replays and re-signed retries). In
the same run, the same load goes to a minimal view that reads the body and inserts
one row, as the baseline to compare with.

Everything is its own: a fresh database (dropped at the end), the fal emulator for
the JWKS (keys generated locally), the gunicorn processes. Nothing leaves 127.0.0.1.

    .venv/bin/python bench/webhooks.py [--deliveries 3000] [--clients 16] [--duplicates 0.5]

Targets (issue 11): at least 200 verified deliveries/s with p99 at most 100 ms, no
5xx, every avatar completed once (each first delivery is committed as received, then
processed: two commits).

What bounds it: on a small machine the web workers, PostgreSQL and the load
generator share the cores, so the printed CPU ceiling (cores x 1000 / CPU ms per
request) caps throughput, and with 16 clients always waiting, the mean latency is
16 / throughput. A first delivery is, in statements: the lookup of its training (and
whether it replays one); the received row and its asynchronous commit (the crash
window: a worker killed mid-delivery leaves a row the sweep processes); the
transition (avatar, training, timeline event); the owner's message and its task (one
message per outcome, sent by the worker); the API client's callback lookup; the kept
files' rows (fal's CDN deletes the LoRA) and, after commit, their copy task; the
outcome and its running total; and, after commit in a transaction of their own, the
finish counter and the time-to-ready histogram (/metrics). Django's ORM costs about
0.4-0.6 ms of worker CPU per statement: tests/test_webhooks_statements.py keeps the
reads at one per delivery.

This module is also the bench-only URLconf and WSGI app that gunicorn loads
(``bench.webhooks:wsgi()``): the production routes plus ``/bench/minimal/``. The
baseline view lives here so that it never exists in production.
"""

from __future__ import annotations

import argparse
import heapq
import http.client
import multiprocessing
import os
import random
import resource
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
    submit_through_transitions,
)

WEBHOOK_PATH = "/webhooks/fal/"
MINIMAL_PATH = "/bench/minimal/"


# --- what gunicorn loads -------------------------------------------------------------------


def minimal(request):
    """The baseline: read the body, insert one row, answer JSON. No checks at all."""
    from django.http import JsonResponse

    from monitoring.models import WebhookDelivery

    body = request.read()
    WebhookDelivery.objects.create(
        verdict="valid",
        outcome="received",
        body=body.decode("utf-8", "replace"),
        body_size=len(body),
    )
    return JsonResponse({"outcome": "stored"})


def __getattr__(name: str):
    # ``urlpatterns`` is built on first use, after Django is set up in the worker, so
    # that running this file as the benchmark does not import Django models.
    if name == "urlpatterns":
        from django.db import transaction
        from django.urls import path
        from django.views.decorators.csrf import csrf_exempt

        from avatarsite.urls import urlpatterns as production

        view = csrf_exempt(transaction.non_atomic_requests(minimal))
        return [path(MINIMAL_PATH.strip("/") + "/", view), *production]
    raise AttributeError(name)


def wsgi():
    """gunicorn app factory: the production settings with this module as URLconf."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "avatarsite.settings")
    from django.conf import settings

    settings.ROOT_URLCONF = __name__
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


# --- set-up ------------------------------------------------------------------------------------


def _make_trainings(count: int, prefix: str) -> list[str]:
    """Avatars in training with submitted attempts, through the transitions module."""
    trainings = submit_through_transitions(
        count,
        first_telegram_id=900_000,
        endpoint="fal-ai/flux-lora-portrait-trainer",
        request_id=lambda i: f"{prefix}-{i:06d}",
    )
    return [t.fal_request_id for t in trainings]


def _deliveries(
    signer, request_ids: list[str], duplicates: float, seed: int
) -> list[tuple[bytes, dict, str]]:
    """First deliveries, each followed a little later by a duplicate for some of them.

    Half the duplicates are exact replays (same signature), half re-signed retries
    (fresh timestamp, new signature), as fal's retries would be.
    """
    from fakes.fal_signing import delivery_body, lora_payload

    rng = random.Random(seed)
    queue: list[tuple[float, int, tuple[bytes, dict]]] = []
    for index, request_id in enumerate(request_ids):
        body = delivery_body(request_id, payload=lora_payload(request_id))
        headers = {**signer.headers(body, request_id), "Content-Type": "application/json"}
        heapq.heappush(queue, (index, 0, (body, headers, "first")))
        if rng.random() < duplicates:
            later = index + rng.randint(1, 200) + 0.5
            if rng.random() < 0.5:
                copy, kind = headers, "replay"
            else:
                copy = {
                    **signer.headers(
                        body, request_id, timestamp=int(time.time()) - rng.randint(1, 30)
                    ),
                    "Content-Type": "application/json",
                }
                kind = "re-signed"
            heapq.heappush(queue, (later, 1, (body, copy, kind)))
    return [heapq.heappop(queue)[2] for _ in range(len(queue))]


def _start_gunicorn(
    port: int, env: dict[str, str], log_dir: Path, threads: int | None
) -> subprocess.Popen:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    # The app's own log lines (stderr) go to a file, as they would in production.
    output = open(log_dir / "server.log", "ab")  # noqa: SIM115 (lives as long as the server)
    # gunicorn.conf.py as bin/docker-entrypoint uses it; only the address and the log
    # files differ (and the threads, when asked).
    overrides = {"WEB_CONCURRENCY": "2", "GUNICORN_ACCESS_LOG": str(log_dir / "access.log")}
    if threads is not None:
        overrides["GUNICORN_THREADS"] = str(threads)
    process = subprocess.Popen(
        [
            str(gunicorn),
            "bench.webhooks:wsgi()",
            "--config",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--error-logfile",
            str(log_dir / "error.log"),
        ],
        cwd=ROOT,
        env={**env, **overrides},
        stdout=output,
        stderr=output,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited: see {log_dir / 'error.log'}")
        try:
            status, _ = _post(port, MINIMAL_PATH, b"{}", {"Content-Type": "application/json"})
            if status == 200:
                return process
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not answer within 30 s")


# --- load --------------------------------------------------------------------------------------


def _post(port: int, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _client_process(port, path, work, threads, barrier, results) -> None:
    """One load process: ``threads`` clients sharing this process's slice of the work."""
    lock = threading.Lock()
    items = iter(work)
    latencies: list[tuple[str, float]] = []
    statuses: dict[int, int] = {}

    def client() -> None:
        while True:
            with lock:
                item = next(items, None)
            if item is None:
                return
            body, headers, kind = item
            started = time.perf_counter()
            try:
                status, _ = _post(port, path, body, headers)
            except OSError:
                status = 599
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append((kind, elapsed))
                statuses[status] = statuses.get(status, 0) + 1

    barrier.wait()
    started = time.time()
    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((started, time.time(), latencies, statuses))


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_of(pids) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def _processes(*, parent: int | None = None, name: str | None = None) -> list[int]:
    """Pids of the children of ``parent``, or of the processes called ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, rest = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if parent is not None and int(rest.split()[1]) == parent:
            found.append(int(entry.name))
        elif name is not None and comm.split("(", 1)[1] == name:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """Where the CPU of a load went: the web workers, PostgreSQL, the load generator.

    On a 2-core machine that others share, throughput swings with the machine's
    speed; CPU milliseconds per request swing much less, so they are printed too.
    """

    def __init__(self, server: subprocess.Popen):
        self.workers = _processes(parent=server.pid)
        self.postgres = _processes(name="postgres")

    def __enter__(self) -> CpuMeter:
        self.start = (_cpu_of(self.workers), _cpu_of(self.postgres), _children_cpu())
        return self

    def __exit__(self, *exc) -> None:
        end = (_cpu_of(self.workers), _cpu_of(self.postgres), _children_cpu())
        self.used = [b - a for a, b in zip(self.start, end, strict=True)]


def _children_cpu() -> float:
    # The load processes are our children: their CPU counts here once they are joined.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(
    port: int,
    path: str,
    work: list,
    clients: int,
    processes: int = 4,
    server: subprocess.Popen | None = None,
) -> dict:
    """``clients`` concurrent clients (threads over a few processes, to dodge the GIL)."""
    if server is not None:
        with CpuMeter(server) as meter:
            figures = run_load(port, path, work, clients, processes)
        figures["cpu"] = meter.used
        return figures
    processes = max(1, min(processes, clients))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    results = context.Queue()
    slices = [work[i::processes] for i in range(processes)]
    per_process = [
        clients // processes + (1 if i < clients % processes else 0) for i in range(processes)
    ]
    procs = [
        context.Process(
            target=_client_process, args=(port, path, slices[i], per_process[i], barrier, results)
        )
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    gathered = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    start = min(g[0] for g in gathered)
    end = max(g[1] for g in gathered)
    latencies = [lat for g in gathered for lat in g[2]]
    statuses: dict[int, int] = {}
    for g in gathered:
        for status, count in g[3].items():
            statuses[status] = statuses.get(status, 0) + count
    return _figures(latencies, end - start, statuses)


def _figures(tagged: list[tuple[str, float]], seconds: float, statuses: dict[int, int]) -> dict:
    latencies = sorted(lat for _, lat in tagged)
    by_kind: dict[str, list[float]] = {}
    for kind, lat in tagged:
        by_kind.setdefault(kind, []).append(lat)
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "per_second": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "statuses": dict(sorted(statuses.items())),
        "tagged": tagged,
        "p50_ms_by_kind": {k: statistics.median(v) * 1000 for k, v in sorted(by_kind.items())},
    }


def _combine(parts: list[dict]) -> dict:
    statuses: dict[int, int] = {}
    for part in parts:
        for status, count in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    combined = _figures(
        [item for part in parts for item in part["tagged"]],
        sum(part["seconds"] for part in parts),
        statuses,
    )
    if all("cpu" in part for part in parts):
        combined["cpu"] = [sum(part["cpu"][i] for part in parts) for i in range(3)]
    return combined


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=3000, help="first deliveries (avatars)")
    parser.add_argument(
        "--duplicates", type=float, default=0.5, help="share of them delivered again"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=None, help="gunicorn threads per worker (gunicorn.conf.py)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of each load")
    parser.add_argument("--probe", type=int, default=200, help="avatars for the one-client pass")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]

    server_url = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
    db_name, db_url = create_database(server_url, "bench_webhooks")
    work_dir = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    from fakes.fal_emulator import FalEmulator

    emulator = FalEmulator(state_dir=work_dir / "fal").start()
    gunicorn = None
    env = production_env(
        db_url,
        PUBLIC_BASE_URL="http://127.0.0.1",
        FAL_WEBHOOK_JWKS_URL=emulator.jwks_url,
        SSL_CERT_FILE=emulator.cert_file,
        NOTIFICATION_BACKEND="locmem",
    )
    try:
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0)
        print(f"database {db_name} migrated; creating {args.deliveries} trainings …", flush=True)
        request_ids = _make_trainings(args.deliveries, "bench")
        probe_ids = _make_trainings(args.probe, "probe")
        warmup_ids = [f"warmup-{i}" for i in range(200)]  # unmatched: no avatar changes
        work = _deliveries(emulator.signer, request_ids, args.duplicates, args.seed)
        warmup = _deliveries(emulator.signer, warmup_ids, 0.0, args.seed)
        probe = _deliveries(emulator.signer, probe_ids, args.duplicates, args.seed)
        connections.close_all()

        port = free_port()
        gunicorn = _start_gunicorn(port, env, work_dir, args.threads)
        run_load(port, MINIMAL_PATH, warmup, args.clients)
        run_load(port, WEBHOOK_PATH, warmup, args.clients)

        # Alternate the two loads in rounds, so that whatever else the machine is doing
        # weighs on both alike and the ratio stays meaningful.
        rounds = []
        size = -(-len(work) // args.rounds)
        for start in range(0, len(work), size):
            chunk = work[start : start + size]
            rounds.append(
                (
                    run_load(port, MINIMAL_PATH, chunk, args.clients, server=gunicorn),
                    run_load(port, WEBHOOK_PATH, chunk, args.clients, server=gunicorn),
                )
            )
        baseline = _combine([r[0] for r in rounds])
        webhooks = _combine([r[1] for r in rounds])
        # Service time without queueing: one client, one request at a time.
        alone = (run_load(port, MINIMAL_PATH, probe, 1), run_load(port, WEBHOOK_PATH, probe, 1))
        stop_group(gunicorn)

        from django.db.models import Count

        from monitoring.models import Avatar, WebhookDelivery
        from notifications.models import Notification

        completed = Avatar.objects.filter(status="completed").count()
        outcomes = dict(
            sorted(
                WebhookDelivery.objects.exclude(outcome="received")
                .filter(request_id__startswith="bench-")
                .values_list("outcome")
                .annotate(n=Count("id"))
            )
        )
        notifications = Notification.objects.count()
        connections.close_all()
    finally:
        if gunicorn is not None:
            stop_group(gunicorn)
        emulator.stop()
        drop_database(server_url, db_name)

    ratio = webhooks["per_second"] / baseline["per_second"]
    print()
    print(
        f"machine load (1-min average, {os.cpu_count()} cores): {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    kind = f"gthread workers x {args.threads or 'gunicorn.conf.py'} threads"
    print(
        f"gunicorn 2 {kind}, PostgreSQL, {args.clients} concurrent clients, "
        f"{len(work)} requests each ({args.deliveries} first deliveries + "
        f"{len(work) - args.deliveries} duplicates), {len(rounds)} alternating rounds"
    )
    print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}  statuses")
    for label, figures in (("minimal one-row view", baseline), ("/webhooks/fal/", webhooks)):
        print(
            f"{label:24}{figures['per_second']:>10.0f}{figures['p50_ms']:>10.1f}"
            f"{figures['p99_ms']:>10.1f}  {figures['statuses']}"
        )
    print(f"webhooks/minimal throughput: {ratio:.2f} (for comparison, not a target)")
    print("CPU per request (ms): web workers + PostgreSQL = server; load generator")
    for label, figures in (("minimal one-row view", baseline), ("/webhooks/fal/", webhooks)):
        workers, postgres, clients = (
            seconds * 1000 / figures["requests"] for seconds in figures["cpu"]
        )
        print(
            f"  {label:22}{workers:6.2f} + {postgres:5.2f} = {workers + postgres:5.2f};  {clients:5.2f}"
        )
    # What the machine could do at best: every core busy with this load and nothing
    # else. Throughput cannot pass it, whatever the code waits on.
    cores = os.cpu_count() or 1
    for label, figures in (("minimal one-row view", baseline), ("/webhooks/fal/", webhooks)):
        per_request = sum(figures["cpu"]) * 1000 / figures["requests"]
        print(
            f"  CPU ceiling of {label}: {cores} cores x 1000 / {per_request:.2f} ms "
            f"= {cores * 1000 / per_request:.0f} req/s"
        )
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in alone[1]["p50_ms_by_kind"].items())
    print(
        f"one client, one request at a time ({len(probe)} requests): minimal p50 "
        f"{alone[0]['p50_ms']:.1f} ms; /webhooks/fal/ p50 by kind: {kinds} ms"
    )
    print(
        f"avatars completed: {completed}/{args.deliveries + args.probe}, notifications queued: {notifications}, "
        f"delivery outcomes: {outcomes}"
    )
    targets = {
        ">= 200 deliveries/s": webhooks["per_second"] >= 200,
        "p99 <= 100 ms": webhooks["p99_ms"] <= 100,
        "every avatar completed once": completed == args.deliveries + args.probe == notifications,
        "no 5xx": all(status < 500 for status in webhooks["statuses"]),
    }
    for name, met in targets.items():
        print(f"  {'met ' if met else 'MISSED'} {name}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
