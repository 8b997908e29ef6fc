"""Benchmark: ``reconcile_fal`` over N requests in fal's record (100 per page).

    .venv/bin/python bench/reconcile.py --n 10000 [--known 0.9] [--stale 20]

Starts the fal emulator (a separate process) with N finished portrait jobs in its
record, creates a scratch PostgreSQL database (server of DATABASE_URL) holding
trainings for a share of them (``--known``, finished) plus ``--stale`` trainings fal
finished that we still show active, and runs, each in its own process:

- ``reconcile``: ``monitoring.reconcile.reconcile_fal`` (what the command and the daily
  schedule run): pages through the record, compares one page per query, records the
  unknown requests, alerts staff, finishes the stale trainings;
- baseline ``listing``: the same pages fetched and parsed, nothing compared (the floor);
- baseline ``per-request``: the naive comparison, one database query per listed request.

It prints wall time, Platform API requests made, database queries and peak memory
(max RSS of the process) of each.
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


def _fill(n: int, known: float, stale: int) -> None:
    from django.core.management import call_command
    from django.utils import timezone

    from monitoring.models import Avatar, AvatarStatus, FalStatus, Owner, Training

    call_command("migrate", verbosity=0)
    now = timezone.now()
    count = int(n * known)
    owner = Owner.objects.create(telegram_id=42)
    avatars = Avatar.objects.bulk_create(
        Avatar(
            owner=owner,
            name=f"a{i}",
            trigger_word="b",
            images_url=f"https://bench/{i}.zip",
            status=AvatarStatus.TRAINING if i < stale else AvatarStatus.COMPLETED,
        )
        for i in range(count)
    )
    trainings = Training.objects.bulk_create(
        Training(
            avatar=avatar,
            endpoint=ENDPOINT,
            fal_request_id=f"bench-rec-{i:06d}",
            fal_status=FalStatus.IN_PROGRESS if i < stale else FalStatus.COMPLETED,
            finished_at=None if i < stale else now,
            outcome="" if i < stale else "completed",
            next_check_at=now + timezone.timedelta(hours=1) if i < stale else None,
        )
        for i, avatar in enumerate(avatars)
    )
    for avatar, training in zip(avatars, trainings, strict=True):
        avatar.current_training = training
    Avatar.objects.bulk_update(avatars, ["current_training"], batch_size=1000)


def _measure(mode: str) -> dict:
    from django.db import connection
    from django.utils import timezone

    from monitoring import reconcile
    from monitoring.fal import platform
    from monitoring.models import EventSource, Training

    queries = 0

    def count(execute, sql, params, many, context):
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    began = time.perf_counter()
    figures: dict = {}
    with connection.execute_wrapper(count):
        if mode == "reconcile":
            report = reconcile.reconcile_fal(source=EventSource.COMMAND)
            figures.update(
                checked=report.checked,
                unknown=len(report.unknown_to_us),
                finished_now=len(report.finished_now),
                calls=report.platform_calls,
            )
        else:
            now = timezone.now()
            with platform.PlatformClient() as client:
                listed = unknown = 0
                for item in client.list_requests(
                    ENDPOINT, start=now - timezone.timedelta(hours=24), end=now
                ):
                    listed += 1
                    if mode == "per-request":
                        unknown += not Training.objects.filter(
                            fal_request_id=item.request_id
                        ).exists()
                figures.update(checked=listed, unknown=unknown, calls=client.calls)
    figures.update(
        wall=time.perf_counter() - began,
        queries=queries,
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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
    parser.add_argument("--n", type=int, default=10_000, help="requests in fal's record")
    parser.add_argument("--known", type=float, default=0.9, help="share we already follow")
    parser.add_argument("--stale", type=int, default=20, help="of those, still shown active")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")

    with tempfile.TemporaryDirectory(prefix="bench-record-") as state:
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
        name, url = create_database(server, "bench_reconcile")
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
                FAL_PLATFORM_MAX_PAGES="1000",
            )
            _child(env, "fill", str(args.n), str(args.known), str(args.stale))
            rows = [(mode, _child(env, mode)) for mode in ("listing", "per-request", "reconcile")]
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)
            drop_database(server, name)

    print(
        f"reconcile_fal over {args.n} requests in fal's record (100 per page), "
        f"{args.known:.0%} already followed, {args.stale} stale active trainings"
    )
    print(f"(CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    header = (
        f"{'mode':<12} {'listed':>7} {'unknown':>7} {'finished':>8} {'API calls':>9} "
        f"{'queries':>8} {'wall s':>7} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for mode, f in rows:
        print(
            f"{mode:<12} {f['checked']:>7} {f['unknown']:>7} {f.get('finished_now', '-'):>8} "
            f"{f['calls']:>9} {f['queries']:>8} {f['wall']:>7.2f} {f['peak_mb']:>8.0f}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _django(json.loads(sys.argv[2]))
        mode = sys.argv[3]
        if mode == "fill":
            _fill(int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
            print(json.dumps({"ok": True}))
        else:
            print(json.dumps(_measure(mode)))
    else:
        main()
