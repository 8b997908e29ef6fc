"""Benchmark: from a fal webhook's arrival to the fake Bot API receiving the message.

What it measures, with real processes on PostgreSQL (a fresh database, dropped at
the end): gunicorn serving ``/webhooks/fal/`` (2 sync workers), the main django-q2
cluster (periodic checks) and the notifications cluster (``Q_CLUSTER_NAME=
notifications``), both with the default worker settings; the fal emulator (JWKS and
status answers) and the fake Telegram Bot API on loopback, python-telegram-bot
really sending over HTTP.

1. quiet:  signed completion webhooks, one every ``--gap`` seconds, each for an
   avatar of its own owner; latency = fake receipt time - time just before the POST.
2. busy:   the same while a large check run is going on: ``--busy`` active trainings
   whose status calls each take ``--status-latency`` s on the emulator, fanned out in
   batches over the main cluster's workers. The main queue's backlog during the
   measurement is printed, to show the run really was going on. Baseline in the
   same run: the notifications cluster stopped and each message's task put on the
   main queue instead (what one shared queue would do); the wait is not capped, up
   to 60 s, and anything later counts as missing.
3. rate:   ``--burst`` owner messages written at once (one transaction each, as the
   transitions do); sustained messages/s at the fake and the busiest 1-second window
   (limit: 25/s overall).

    .venv/bin/python bench/notifications.py [--probes 30] [--busy 3000] [--burst 300]

Target (issue 5): p95 at most 2 s with and without the check run; at most 25/s.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
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


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _post(port: int, path: str, body: bytes, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _wait_http(port: int, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not answer within 30 s")


_owner_ids = iter(range(5_000_000, 6_000_000))


def _make_trainings(count: int, prefix: str, *, distinct_owners: bool) -> list[tuple[int, str]]:
    """Avatars in training with submitted attempts; returns (owner chat id, request id)."""
    from monitoring import transitions
    from monitoring.models import EventSource, Owner

    made = []
    shared = None if distinct_owners else Owner.objects.create(telegram_id=next(_owner_ids))
    for i in range(count):
        owner = shared or Owner.objects.create(telegram_id=next(_owner_ids), username=f"b{i}")
        avatar = transitions.create_avatar(
            owner=owner,
            name=f"{prefix} <{i}> & 🐱",
            training_type="portrait",
            trigger_word="ohwx",
            images_url="https://example.com/p.zip",
            source=EventSource.COMMAND,
        )
        started = transitions.begin_training(
            avatar,
            endpoint="fal-ai/flux-lora-portrait-trainer",
            arguments={},
            webhook_url="",
            source=EventSource.COMMAND,
        )
        request_id = f"{prefix}-{i:06d}"
        transitions.record_submitted(
            started.training, request_id=request_id, source=EventSource.COMMAND
        )
        made.append((owner.telegram_id, request_id))
    return made


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def _measure_webhooks(
    port, signer, telegram, probes, gap, after_post=None
) -> tuple[list[float], int]:
    """POST a signed completion per probe, ``gap`` s apart; latency to the fake's receipt."""
    from fakes.fal_signing import delivery_body, lora_payload

    sent_at: dict[int, float] = {}
    bad = 0
    for chat_id, request_id in probes:
        body = delivery_body(request_id, payload=lora_payload(request_id))
        headers = {**signer.headers(body, request_id), "Content-Type": "application/json"}
        sent_at[chat_id] = time.time()
        if _post(port, "/webhooks/fal/", body, headers) != 200:
            bad += 1
        if after_post is not None:
            after_post(request_id)
        time.sleep(gap)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        received = {m.chat_id: m.received_at for m in telegram.messages if m.chat_id in sent_at}
        if len(received) == len(sent_at):
            break
        time.sleep(0.05)
    latencies = [received[c] - sent_at[c] for c in sent_at if c in received]
    return latencies, bad + (len(sent_at) - len(latencies))


def _main_queue_backlog() -> int:
    from django.conf import settings
    from django_q.models import OrmQ

    return OrmQ.objects.filter(key=settings.Q_CLUSTER["name"]).count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=30, help="webhooks measured per scenario")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between webhooks")
    parser.add_argument("--busy", type=int, default=3000, help="active trainings in the check run")
    parser.add_argument("--status-latency", type=float, default=3.0)
    parser.add_argument("--burst", type=int, default=300, help="messages for the rate figure")
    args = parser.parse_args(argv)

    server_url = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
    db_name, db_url = create_database(server_url, "bench_notifications")
    work_dir = Path(tempfile.mkdtemp(prefix="bench-notifications-"))
    from fakes.fal_emulator import FalEmulator
    from fakes.telegram_api import FakeTelegramAPI

    emulator = FalEmulator(
        status_latency=args.status_latency, adopt_unknown=True, state_dir=work_dir / "fal"
    ).start()
    telegram = FakeTelegramAPI(token="7700000077:BENCH-token-xyz").start()
    port = free_port()
    env = production_env(
        db_url,
        **emulator.env(),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        NOTIFICATION_BACKEND="telegram",
        TELEGRAM_BOT_TOKEN=telegram.token,
        TELEGRAM_API_BASE_URL=telegram.base_url,
        TELEGRAM_STAFF_CHAT_ID="-1009000000001",
        PYTHONUNBUFFERED="1",
    )
    processes: list[subprocess.Popen] = []
    python = sys.executable
    try:
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections
        from django_q.tasks import async_task

        from monitoring.models import CheckRun

        call_command("migrate", verbosity=0)
        quiet = _make_trainings(args.probes, "quiet", distinct_owners=True)
        busy_probes = _make_trainings(args.probes, "busyprobe", distinct_owners=True)
        shared_probes = _make_trainings(args.probes, "sharedprobe", distinct_owners=True)
        connections.close_all()

        gunicorn = str(Path(python).with_name("gunicorn"))
        processes.append(
            _start(
                [
                    gunicorn,
                    "avatarsite.wsgi:application",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "2",
                    "--timeout",
                    "30",
                ],
                env,
                work_dir / "gunicorn.log",
            )
        )
        processes.append(
            _start([python, "manage.py", "qcluster"], env, work_dir / "qcluster-main.log")
        )
        processes.append(
            _start(
                [python, "manage.py", "qcluster"],
                {**env, "Q_CLUSTER_NAME": "notifications"},
                work_dir / "qcluster-notifications.log",
            )
        )
        _wait_http(port)
        # Startup restore runs a check of the few active trainings; let it finish.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (
                CheckRun.objects.exists()
                and not CheckRun.objects.filter(finished_at__isnull=True).exists()
            ):
                break
            time.sleep(0.2)
        time.sleep(1)
        print(f"processes up (logs in {work_dir}); scenario 1: quiet", flush=True)

        quiet_lat, quiet_bad = _measure_webhooks(port, emulator.signer, telegram, quiet, args.gap)

        print(
            f"scenario 2: creating {args.busy} active trainings for a large check run …", flush=True
        )
        before = set(CheckRun.objects.values_list("pk", flat=True))
        _make_trainings(args.busy, "busy", distinct_owners=False)
        # The scheduled run may already have claimed some of them; this one takes the rest.
        async_task("monitoring.tasks.run_check", "manual")
        new_runs = CheckRun.objects.exclude(pk__in=before)
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline and sum(new_runs.values_list("due", flat=True)) < args.busy
        ):
            time.sleep(0.1)

        def runs_going() -> int:
            return new_runs.filter(finished_at__isnull=True).count() + _main_queue_backlog()

        going_start = runs_going()
        busy_lat, busy_bad = _measure_webhooks(
            port, emulator.signer, telegram, busy_probes, args.gap
        )
        going_end = runs_going()
        claimed = sum(new_runs.values_list("due", flat=True))
        checked_during = sum(emulator.status_calls.values())

        # Baseline, same check run: what a shared queue would do. The notifications
        # cluster is stopped and each message's task goes to the main queue instead.
        stop_group(processes.pop())
        from notifications.models import Notification as _N

        def to_main_queue(request_id: str) -> None:
            row = (
                _N.objects.filter(training__fal_request_id=request_id)
                .values_list("pk", flat=True)
                .first()
            )
            if row is not None:
                async_task("notifications.delivery.deliver", row)

        shared_lat, shared_bad = _measure_webhooks(
            port, emulator.signer, telegram, shared_probes, args.gap, after_post=to_main_queue
        )
        shared_going = runs_going()
        processes.append(
            _start(
                [python, "manage.py", "qcluster"],
                {**env, "Q_CLUSTER_NAME": "notifications"},
                work_dir / "qcluster-notifications-2.log",
            )
        )
        checked_during = (
            emulator.status_calls.total()
            if hasattr(emulator.status_calls, "total")
            else sum(emulator.status_calls.values())
        )

        print(f"scenario 3: {args.burst} messages at once …", flush=True)
        # Owner messages written the way transitions write them, all at once.
        from notifications import outbox
        from notifications.models import Audience, Notification

        telegram_before = len(telegram.messages)
        from monitoring.models import Owner

        for i in range(args.burst):
            owner = Owner.objects.create(telegram_id=next(_owner_ids))
            row = Notification.objects.create(
                dedup_key=f"bench-rate:{i}",
                kind="ready",
                audience=Audience.OWNER,
                owner=owner,
                chat_id=owner.telegram_id,
                text=f"🎉 bench <b>{i}</b>",
            )
            outbox.schedule_delivery(row.pk)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(telegram.messages) - telegram_before < args.burst:
            time.sleep(0.1)
        burst = [m.received_at for m in telegram.messages[telegram_before:]]
        from notifications.models import RateLimitMark

        slots = sorted(
            t.timestamp()
            for t in RateLimitMark.objects.filter(chat_id__gte=5_000_000).values_list(
                "sent_at", flat=True
            )
        )
        slots = slots[-args.burst :]
        busiest_slots = (
            max(sum(1 for t in slots if s <= t < s + 1.0) for s in slots) if slots else 0
        )
        burst.sort()
        busiest = max(sum(1 for t in burst if s <= t < s + 1.0) for s in burst) if burst else 0
        rate = (len(burst) - 1) / (burst[-1] - burst[0]) if len(burst) > 1 else 0.0
        connections.close_all()
    finally:
        for process in reversed(processes):
            stop_group(process)
        telegram.stop()
        emulator.stop()
        drop_database(server_url, db_name)

    def line(label, lat, bad):
        if not lat:
            return f"{label:34}no messages received ({bad} missing)"
        return (
            f"{label:34}{len(lat):>5}{statistics.median(lat) * 1000:>9.0f}"
            f"{_percentile(lat, 0.95) * 1000:>9.0f}{max(lat) * 1000:>9.0f}{bad:>9}"
        )

    print()
    print(
        "webhook arrival → fake Bot API receipt (gunicorn 2 workers; qclusters with default "
        "workers: main 2, notifications 2; PostgreSQL)"
    )
    print(f"{'':34}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'missing':>9}")
    print(line("1. quiet", quiet_lat, quiet_bad))
    print(line(f"2. during a {args.busy}-training check run", busy_lat, busy_bad))
    print(
        f"   check runs claimed {claimed} trainings; unfinished runs + main queue backlog: "
        f"{going_start} at the start, {going_end} at the end; fal status calls so far "
        f"{checked_during}"
    )
    print(line("   baseline: same, one shared queue", shared_lat, shared_bad))
    print(f"   (unfinished runs + main queue backlog at its end: {shared_going})")
    print(
        f"3. {len(burst)}/{args.burst} messages to distinct chats: sustained {rate:.1f} msg/s, "
        f"busiest 1-s window {busiest} at the fake, {busiest_slots} in the limiter (limit 25)"
    )
    targets = {
        "quiet p95 <= 2 s": bool(quiet_lat)
        and _percentile(quiet_lat, 0.95) <= 2.0
        and not quiet_bad,
        "busy p95 <= 2 s": bool(busy_lat) and _percentile(busy_lat, 0.95) <= 2.0 and not busy_bad,
        "check run going all through 2 and baseline": min(going_start, going_end, shared_going) > 0,
        "at most 25 per second": busiest <= 25,
        "every burst message arrived once": len(burst) == args.burst,
    }
    for name, met in targets.items():
        print(f"  {'met ' if met else 'MISSED'} {name}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
