"""Benchmark: one full periodic check run over N active trainings.

    .venv/bin/python bench/check_run.py --n 1000 --n 10000

For each N it creates its own PostgreSQL database (on the server of DATABASE_URL,
default postgres://root@127.0.0.1:5432/root), fills it with N active trainings,
starts the fal emulator (a separate process) answering every status call after
100 ms, and runs one check: ``run_periodic_check`` claims the due trainings and fans
them out as batch tasks on the ORM broker,
and ``--workers`` processes (default 2, the default Q_WORKERS) run those tasks as
django-q2 workers would.

It prints the wall time of the whole run, checks per second, database queries per
checked training and the worker's peak memory, and, in the same run, the rate of the
naive port (status calls one after another, as the old per-avatar pollers did) on a
sample of the same trainings, with the ratio. Targets on a 2-core machine: 10,000
checked within one 60 s interval (>= 300 checks/s), >= 30x the sequential rate,
<= 3 queries per checked training, < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENDPOINT = "fal-ai/flux-lora-portrait-trainer"


def _database_url(name: str) -> str:
    base = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def _admin_execute(sql: str) -> None:
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql)


def _django(database_url: str, emulator_env: dict[str, str]) -> None:
    os.environ.update(emulator_env)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "avatarsite.settings",
            "DATABASE_URL": database_url,
            "DEBUG": "1",
            "FAL_KEY": "bench-key-id:bench-key-secret",
            "PUBLIC_BASE_URL": "http://127.0.0.1:9",
            "NOTIFICATION_BACKEND": "locmem",
        }
    )
    import django

    django.setup()
    import logging

    # The operator lines (one 🔍 per check) go to a file, as they would to a log
    # collector: written, but not flooding this table.
    handler = logging.FileHandler(Path(tempfile.gettempdir()) / "bench-check-run.log")
    for name in ("monitoring", "notifications", "django-q"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False


def _fill(n: int) -> None:
    """N active trainings, as a database holding them would look (fixture data)."""
    from datetime import timedelta

    from django.utils import timezone

    from bench.scratch import create_active_trainings
    from monitoring.models import FalStatus

    now = timezone.now()
    create_active_trainings(
        n,
        first_telegram_id=10_000_000,
        training_fields=lambda i: {
            "endpoint": ENDPOINT,
            "fal_request_id": f"bench-{i:06d}",
            "fal_status": FalStatus.IN_PROGRESS,
            "submitted_at": now - timedelta(minutes=5),
            "started_at": now - timedelta(minutes=4),
            "last_check_ok_at": now - timedelta(minutes=1),
            "next_check_at": now - timedelta(seconds=1),
        },
    )


def worker_main(database_url: str, emulator_env: dict[str, str], index: int) -> dict:
    """A worker process: worker 0 starts the run; every worker then runs batch tasks."""
    _django(database_url, emulator_env)
    from django.db import connection
    from django_q.brokers import get_broker
    from django_q.signing import SignedPackage

    from monitoring import status_checks, tasks
    from monitoring.models import CheckRun

    queries = 0

    def count(execute, sql, params, many, context):
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    broker = get_broker()
    batches: list[tuple[float, float]] = []  # (start offset, seconds) of each batch task
    began = time.time()
    cpu_began = time.process_time()
    with connection.execute_wrapper(count):
        if index == 0:
            status_checks.run_periodic_check()
        else:
            # Wait, like an idle worker, until the run has enqueued its batches.
            while not CheckRun.objects.filter(due__gt=0).exists():
                time.sleep(0.05)
        while True:
            items = broker.dequeue()
            if not items:
                break
            for ack_id, payload in items:
                task = SignedPackage.loads(payload)
                started = time.time()
                getattr(tasks, task["func"].rsplit(".", 1)[1])(*task["args"], **task["kwargs"])
                batches.append((round(started - began, 2), round(time.time() - started, 2)))
                broker.acknowledge(ack_id)
    return {
        "began": began,
        "ended": time.time(),
        "cpu": time.process_time() - cpu_began,
        "batches": batches,
        "queries": queries,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def baseline(database_url: str, emulator_env: dict[str, str], sample: int) -> float:
    """The naive port: one status call after another (sync fal-client), on a sample."""
    _django(database_url, emulator_env)
    import fal_client

    from monitoring.models import Training

    ids = list(Training.objects.order_by("pk").values_list("fal_request_id", flat=True)[:sample])
    client = fal_client.SyncClient(key=os.environ["FAL_KEY"])
    began = time.perf_counter()
    for request_id in ids:
        client.status(ENDPOINT, request_id)
    return len(ids) / (time.perf_counter() - began)


def _child(mode: str, database_url: str, env: dict[str, str], *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, f"--{mode}", database_url, json.dumps(env), *extra],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(n: int, emulator_env: dict[str, str], sample: int, workers: int) -> dict:
    import psycopg

    name = f"bench_checks_{os.getpid()}_{n}"
    _admin_execute(f'DROP DATABASE IF EXISTS "{name}"')
    _admin_execute(f'CREATE DATABASE "{name}"')
    url = _database_url(name)
    try:
        subprocess.run(
            [sys.executable, __file__, "--fill", url, json.dumps(emulator_env), str(n)],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", url, json.dumps(emulator_env), str(i)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(workers)
        ]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        with psycopg.connect(url) as conn:
            due, checked, errors = conn.execute(
                "SELECT due, checked, errors FROM monitoring_checkrun"
            ).fetchone()
        figures = {
            "due": due,
            "checked": checked,
            "errors": errors,
            "wall": max(r["ended"] for r in results) - results[0]["began"],
            "queries": sum(r["queries"] for r in results),
            "cpu": sum(r["cpu"] for r in results),
            "batches": [r["batches"] for r in results],
            "peak_mb": max(r["peak_mb"] for r in results),
        }
        figures["baseline_rate"] = _child("baseline", url, emulator_env, str(sample))["rate"]
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, action="append", help="active trainings (repeatable)")
    parser.add_argument(
        "--latency", type=float, default=0.1, help="emulator seconds per status call"
    )
    parser.add_argument(
        "--sample", type=int, default=50, help="trainings in the sequential baseline"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (Q_WORKERS)")
    parser.add_argument(
        "--concurrency", type=int, help="CHECK_CONCURRENCY (default: the setting's)"
    )
    parser.add_argument("--batch-size", type=int, help="CHECK_BATCH_SIZE (default: the setting's)")
    parser.add_argument("--verbose", action="store_true", help="print every batch's timing")
    args = parser.parse_args()
    sizes = args.n or [1000, 10000]

    with tempfile.TemporaryDirectory(prefix="bench-fal-") as state:
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fakes.fal_emulator",
                "--state-dir",
                state,
                "--status-latency",
                str(args.latency),
                "--adopt-unknown",
                "--no-webhooks",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            env_file = Path(state) / "emulator.env"
            deadline = time.monotonic() + 20
            while not env_file.exists():
                if time.monotonic() > deadline or emulator.poll() is not None:
                    raise SystemExit("the fal emulator did not start")
                time.sleep(0.1)
            emulator_env = dict(
                line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
            )
            emulator_env.pop("FAL_WEBHOOK_JWKS_URL", None)
            # Passed to every child process with the emulator's variables.
            if args.concurrency:
                emulator_env["CHECK_CONCURRENCY"] = str(args.concurrency)
            if args.batch_size:
                emulator_env["CHECK_BATCH_SIZE"] = str(args.batch_size)
            rows = [(n, bench(n, emulator_env, args.sample, args.workers)) for n in sizes]
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)

    print(f"One check run, emulator answering each status call after {args.latency * 1000:.0f} ms")
    print(
        f"(CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
        f"{args.workers} worker processes; baseline on {args.sample} trainings; "
        f"CHECK_CONCURRENCY={args.concurrency or 'default'}, CHECK_BATCH_SIZE={args.batch_size or 'default'})"
    )
    header = (
        f"{'N':>7} {'checked':>8} {'errors':>6} {'wall s':>7} {'checks/s':>9} "
        f"{'queries/check':>13} {'CPU ms/check':>12} {'peak MB':>8} {'seq checks/s':>12} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for n, f in rows:
        rate = f["checked"] / f["wall"] if f["wall"] else 0.0
        per_check = f["queries"] / f["checked"] if f["checked"] else float("nan")
        print(
            f"{n:>7} {f['checked']:>8} {f['errors']:>6} {f['wall']:>7.2f} {rate:>9.0f} "
            f"{per_check:>13.3f} {1000 * f['cpu'] / max(f['checked'], 1):>12.2f} "
            f"{f['peak_mb']:>8.0f} {f['baseline_rate']:>12.1f} "
            f"{rate / f['baseline_rate']:>6.0f}x"
        )
    print(
        "Targets: 10,000 within 60 s (>= 300 checks/s), >= 30x sequential, <= 3 queries, < 300 MB"
    )
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    if args.verbose:
        for n, f in rows:
            for index, batches in enumerate(f["batches"]):
                print(f"N={n} worker {index}: (start s, duration s) per batch: {batches}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--fill", "--worker", "--baseline"):
        mode, url, env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        if mode == "--fill":
            _django(url, env)
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
            _fill(int(sys.argv[4]))
            print(json.dumps({"ok": True}))
        elif mode == "--worker":
            print(json.dumps(worker_main(url, env, int(sys.argv[4]))))
        else:
            print(json.dumps({"rate": baseline(url, env, int(sys.argv[4]))}))
    else:
        main()
