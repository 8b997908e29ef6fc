"""Benchmark: one full periodic check run over N active trainings, on real workers.

    .venv/bin/python bench/check_run.py --n 1000 --n 10000 [--hosts 2]

For each N it creates its own PostgreSQL database (on the server of DATABASE_URL,
default postgres://root@127.0.0.1:5432/root), fills it with N active trainings,
starts the fal emulator (a separate process) answering every status call after
100 ms and a Redis server of its own, then ``--hosts`` (default 2) real
``python manage.py qcluster --only checks`` processes on that Redis broker, as two
hosts would run them, each with the default settings (Q_WORKERS=2). Their startup
scheduled periodic check is the run measured: the trainings are written once both
workers are up, all due, and the run claims them and fans them out as batch tasks
that both clusters' workers take from the broker.

It prints the wall time from the run's start until every training was checked,
checks per second, whether each training was checked exactly once (the runs'
``checked`` counts add up to N, and N distinct trainings were checked), the
largest proportional memory (PSS) of one worker (all its processes), and, in the same run,
the rate of the naive port (status calls one after another, as the old per-avatar
pollers did) on a sample of the same trainings, with the ratio. Targets on a 2-core
machine: 10,000 checked within one 60 s interval (>= 300 checks/s), each once,
>= 30x the sequential rate, < 300 MB per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENDPOINT = "fal-ai/flux-lora-portrait-trainer"
PERIODIC_CHECK = "monitoring: periodic status check"  # monitoring.ops.schedules


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


def _pss_mb(group: int) -> float:
    """Proportional memory of every process in a process group, in MB.

    PSS, not RSS: the worker's processes are forked from one parent and share most of
    their pages, which a sum of RSS would count once per process.
    """
    out = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True, check=False)
    total_kb = 0
    for pid in out.stdout.split():
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue  # the process ended meanwhile
    return total_kb / 1024


def _start_redis(directory: str) -> tuple[subprocess.Popen, str]:
    from bench.scratch import free_port

    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def run_qclusters(url: str, emulator_env: dict[str, str], n: int, hosts: int) -> dict:
    """``hosts`` real ``qcluster --only checks`` on one Redis broker, as hosts would run.

    The workers start on an empty database; then the N trainings are written, all due,
    and the periodic check's schedule is made due: the scheduled run measured claims
    them and fans them out as batch tasks for both clusters' workers. Returns when
    every training was checked (or after two minutes).
    """
    import psycopg

    from bench.scratch import production_env, stop_group

    redis_dir = tempfile.mkdtemp(prefix="bench-redis-")
    redis, redis_url = _start_redis(redis_dir)
    env = production_env(
        url, **emulator_env, REDIS_URL=redis_url, PUBLIC_BASE_URL="http://127.0.0.1:9"
    )
    env["NOTIFICATION_BACKEND"] = "locmem"
    logs = Path(tempfile.mkdtemp(prefix="bench-qcluster-"))
    clusters: list[subprocess.Popen] = []
    peak_mb = 0.0
    try:
        started = time.time()
        for i in range(hosts):
            with (logs / f"qcluster-{i}.log").open("wb") as out:
                clusters.append(
                    subprocess.Popen(
                        [sys.executable, "manage.py", "qcluster", "--only", "checks"],
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        time.sleep(8)  # both workers up (their restores find nothing to check)
        subprocess.run(
            [sys.executable, __file__, "--fill", url, json.dumps(emulator_env), str(n)],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        runs_sql = "FROM monitoring_checkrun WHERE due > 0"
        sql = f"SELECT coalesce(sum(checked), 0), min(started_at) {runs_sql}"
        deadline = time.monotonic() + 130
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE django_q_schedule SET next_run = now() WHERE name = %s", [PERIODIC_CHECK]
            )
            while time.monotonic() < deadline:
                checked, _first = conn.execute(sql).fetchone()
                peak_mb = max(peak_mb, max(_pss_mb(c.pid) for c in clusters))
                if checked >= n:
                    break
                time.sleep(0.2)
            done = time.time()
            checked, first = conn.execute(sql).fetchone()
            runs = conn.execute(f"SELECT count(*) {runs_sql}").fetchone()[0]
            once = conn.execute(
                "SELECT count(*) FROM monitoring_training WHERE last_checked_at >= %s", [first]
            ).fetchone()[0]
            errors = conn.execute(f"SELECT coalesce(sum(errors), 0) {runs_sql}").fetchone()[0]
    finally:
        for cluster in clusters:
            stop_group(cluster)
        redis.terminate()
        redis.wait(10)
    return {
        "checked": checked,
        "distinct": once,
        "errors": errors,
        "runs": runs,
        "wall": done - first.timestamp() if first else float("inf"),
        "startup": first.timestamp() - started if first else float("inf"),
        "peak_mb": peak_mb,
        "logs": str(logs),
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


def bench(n: int, emulator_env: dict[str, str], sample: int, hosts: int) -> dict:
    name = f"bench_checks_{os.getpid()}_{n}"
    _admin_execute(f'DROP DATABASE IF EXISTS "{name}"')
    _admin_execute(f'CREATE DATABASE "{name}"')
    url = _database_url(name)
    try:
        subprocess.run(
            [sys.executable, __file__, "--fill", url, json.dumps(emulator_env), "0"],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        figures = run_qclusters(url, emulator_env, n, hosts)
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
    parser.add_argument("--hosts", type=int, default=2, help="qcluster processes (hosts)")
    parser.add_argument(
        "--concurrency", type=int, help="CHECK_CONCURRENCY (default: the setting's)"
    )
    parser.add_argument("--batch-size", type=int, help="CHECK_BATCH_SIZE (default: the setting's)")
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
            rows = [(n, bench(n, emulator_env, args.sample, args.hosts)) for n in sizes]
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)

    print(f"One check run, emulator answering each status call after {args.latency * 1000:.0f} ms")
    print(
        f"(CPU cores: {os.cpu_count()}; {args.hosts} x `qcluster --only checks` on one Redis "
        f"broker; baseline on {args.sample} trainings; "
        f"CHECK_CONCURRENCY={args.concurrency or 'default'}, "
        f"CHECK_BATCH_SIZE={args.batch_size or 'default'})"
    )
    header = (
        f"{'N':>7} {'checked':>8} {'distinct':>8} {'errors':>6} {'runs':>4} {'wall s':>7} "
        f"{'checks/s':>9} {'peak MB':>8} {'seq checks/s':>12} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for n, f in rows:
        rate = f["checked"] / f["wall"] if f["wall"] else 0.0
        print(
            f"{n:>7} {f['checked']:>8} {f['distinct']:>8} {f['errors']:>6} {f['runs']:>4} "
            f"{f['wall']:>7.2f} {rate:>9.0f} {f['peak_mb']:>8.0f} "
            f"{f['baseline_rate']:>12.1f} {rate / f['baseline_rate']:>6.0f}x"
        )
    print(
        "Targets: 10,000 within 60 s (>= 300 checks/s), each training once "
        "(checked = distinct = N), >= 30x sequential, < 300 MB per worker"
    )
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    for n, f in rows:
        print(
            f"N={n}: worker logs in {f['logs']}; first run began {f['startup']:.1f} s after start"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--fill", "--baseline"):
        mode, url, env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        if mode == "--fill":
            _django(url, env)
            from django.core.management import call_command

            if int(sys.argv[4]) == 0:
                call_command("migrate", verbosity=0)
            else:
                _fill(int(sys.argv[4]))
            print(json.dumps({"ok": True}))
        else:
            print(json.dumps({"rate": baseline(url, env, int(sys.argv[4]))}))
    else:
        main()
