"""Benchmark: the cost lookup for N finished trainings (fal's billing events, 50 ids a call).

    .venv/bin/python bench/billing.py --n 10000

Starts the fal emulator (a separate process) with N finished portrait jobs (each billed
its steps at the emulator's unit price), creates a scratch PostgreSQL database (server
of DATABASE_URL) holding a finished training for each, and runs, each in its own
process:

- baseline ``listing``: the billing events only, fetched and parsed for the same ids in
  the same calls (50 ids a call, every page), nothing read from or written to the
  database (the floor);
- ``lookup``: ``monitoring.billing.look_up_costs`` (what the task runs every minute):
  claims each batch of 50, asks fal, stores every cost and adds the running totals.

It prints wall time, Platform API requests, database queries and peak memory (max RSS
of the process) of each, and checks that every training got its cost.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENDPOINT = "fal-ai/flux-lora-portrait-trainer"


def _django(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()
    import logging

    logging.getLogger("monitoring").setLevel(logging.WARNING)


def _fill(n: int) -> None:
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    from monitoring.models import Avatar, AvatarStatus, FalStatus, Owner, Training

    call_command("migrate", verbosity=0)
    now = timezone.now()
    owner = Owner.objects.create(telegram_id=42)
    avatars = Avatar.objects.bulk_create(
        Avatar(
            owner=owner,
            name=f"a{i}",
            trigger_word="b",
            images_url=f"https://bench/{i}.zip",
            status=AvatarStatus.COMPLETED,
        )
        for i in range(n)
    )
    trainings = []
    for i, avatar in enumerate(avatars):
        # As the emulator's --record-jobs: ended over the last 20 hours, ran 30 s.
        finished = now - timedelta(seconds=60 + i * 72_000 / max(n, 1))
        trainings.append(
            Training(
                avatar=avatar,
                endpoint=ENDPOINT,
                fal_request_id=f"bench-rec-{i:06d}",
                fal_status=FalStatus.COMPLETED,
                created_at=finished - timedelta(seconds=31),
                finished_at=finished,
                outcome="completed",
            )
        )
    Training.objects.bulk_create(trainings, batch_size=2000)


def _measure(mode: str) -> dict:
    from django.db import connection
    from django.utils import timezone

    from monitoring import billing
    from monitoring.fal import platform
    from monitoring.models import CostState, Training

    queries = 0
    in_db = 0.0

    def count(execute, sql, params, many, context):
        nonlocal queries, in_db
        queries += 1
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            in_db += time.perf_counter() - began

    now = timezone.now()
    # The ids and their windows, read before the clock starts (the listing reads nothing).
    rows = list(
        Training.objects.cost_due(now)
        .order_by("finished_at", "pk")
        .values_list("fal_request_id", "created_at")
    )
    began = time.perf_counter()
    figures: dict = {}
    with connection.execute_wrapper(count):
        if mode == "lookup":
            report = billing.look_up_costs(now=now, limit=len(rows))
            figures.update(events=report.billed, calls=report.calls, error=report.error)
        else:
            events = 0
            end = now + timezone.timedelta(minutes=1)
            with platform.PlatformClient(admin=True) as client:
                for first in range(0, len(rows), platform.BILLING_IDS_PER_CALL):
                    chunk = rows[first : first + platform.BILLING_IDS_PER_CALL]
                    start = min(created for _id, created in chunk) - timezone.timedelta(hours=1)
                    for _event in client.billing_events(
                        [request_id for request_id, _created in chunk], start=start, end=end
                    ):
                        events += 1
                figures.update(events=events, calls=client.calls, error="")
    figures.update(
        wall=time.perf_counter() - began,
        queries=queries,
        db=in_db,
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        billed=Training.objects.filter(cost_state=CostState.BILLED).count(),
    )
    return figures


def _child(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(env), *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from bench.scratch import create_database, drop_database

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="finished trainings")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")

    with tempfile.TemporaryDirectory(prefix="bench-billing-") as state:
        started = time.perf_counter()
        emulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fakes.fal_emulator",
                "--state-dir",
                state,
                "--no-webhooks",
                "--record-jobs",
                str(args.n),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        name, url = create_database(server, "bench_billing")
        try:
            env_file = Path(state) / "emulator.env"
            while not env_file.exists():
                if emulator.poll() is not None or time.perf_counter() - started > 60:
                    raise SystemExit("the fal emulator did not start")
                time.sleep(0.1)
            env = dict(
                line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
            )
            env.update(
                DJANGO_SETTINGS_MODULE="avatarsite.settings",
                DATABASE_URL=url,
                DEBUG="1",
                FAL_KEY="bench-key-id:bench-key-secret",
                NOTIFICATION_BACKEND="locmem",
            )
            _child(env, "fill", str(args.n))
            rows = [(mode, _child(env, mode)) for mode in ("listing", "lookup")]
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)
            drop_database(server, name)

    print(f"Cost lookup for {args.n} finished trainings (fal billing events, 50 ids a call)")
    print(f"(CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    header = (
        f"{'mode':<8} {'events':>7} {'API calls':>9} {'queries':>8} {'in db s':>7} {'wall s':>7} "
        f"{'peak MB':>8} {'costs stored':>12}"
    )
    print(header)
    print("-" * len(header))
    for mode, f in rows:
        print(
            f"{mode:<8} {f['events']:>7} {f['calls']:>9} {f['queries']:>8} {f['db']:>7.2f} "
            f"{f['wall']:>7.2f} "
            f"{f['peak_mb']:>8.0f} {f['billed']:>12}"
        )
        if f["error"]:
            print(f"  error: {f['error']}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _django(json.loads(sys.argv[2]))
        mode = sys.argv[3]
        if mode == "fill":
            _fill(int(sys.argv[4]))
            print(json.dumps({"ok": True}))
        else:
            print(json.dumps(_measure(mode)))
    else:
        main()
