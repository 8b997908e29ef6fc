"""Benchmark: from a fal webhook's arrival to the fake Bot API receiving the message.

What it measures, with real processes on PostgreSQL (a fresh database, dropped at
the end): gunicorn serving ``/webhooks/fal/`` (2 sync workers), the one documented
``python manage.py qcluster`` (both roles, checks and notifications, default worker
settings); the fal emulator (JWKS and status answers) and the fake Telegram Bot API on
loopback, python-telegram-bot really sending over HTTP. Every owner message is written
by the transitions (a training completing), as in production.

1. quiet:  signed completion webhooks, one every ``--gap`` seconds, each for an
   avatar of its own owner; latency = fake receipt time - time just before the POST.
2. busy:   the same while a large check run is going on: ``--busy`` active trainings
   whose status calls each take ``--status-latency`` s on the emulator, fanned out in
   batches over the main cluster's workers. The main queue's backlog during the
   measurement is printed, to show the run really was going on. Baseline in the
   same run: the worker restarted as ``qcluster --only checks`` and each message's task
   put on the main queue instead (what one shared queue would do); the wait is not capped, up
   to 60 s, and anything later counts as missing.
3. rate:   ``--burst`` owner messages written at once (one transaction each, as the
   transitions do); sustained messages/s at the fake and the busiest 1-second window
   (limit: 25/s overall).
4. outage: the Bot API answers 502 to everything for ``--outage-seconds`` while
   ``--backlog`` owner messages are written; then it recovers. How long the backlog
   takes to arrive after recovery, at what rate, and the owner-told latency of
   ``--probes`` messages written one every ``--gap`` s after recovery; and the share of
   ``deliver`` tasks that found nothing to do (a second task for one row).
5. handshake: ``--handshake-sends`` sequential sends from this process to the fake
   over HTTPS, as the backend did before (a new HTTP client, so a new TCP and TLS
   handshake, per message) and as it does now (one long-lived connection per process).

The fake Bot API speaks HTTPS (``fakes/tls.py`` certificate, trusted through
SSL_CERT_FILE), as Telegram does.

    .venv/bin/python bench/notifications.py [--probes 30] [--busy 3000] [--burst 300]
        [--backlog 400] [--outage-seconds 60] [--only quiet,busy,rate,outage,handshake]

Targets: p95 at most 2 s with and without the check run; at most 25/s (issue 5);
after a 60 s outage with 400 waiting, the backlog sent within 25 s of recovery at
20 msg/s or more, new messages' p95 at most 2 s, and at most 5 % of deliver tasks
doing nothing (issue 26).
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
    submit_through_transitions,
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


_owner_ids = iter(range(5_000_000, 6_000_000, 100_000))


def _make_trainings(count: int, prefix: str, *, distinct_owners: bool) -> list[tuple[int, str]]:
    """Avatars in training with submitted attempts; returns (owner chat id, request id)."""
    trainings = submit_through_transitions(
        count,
        first_telegram_id=next(_owner_ids),
        endpoint="fal-ai/flux-lora-portrait-trainer",
        request_id=lambda i: f"{prefix}-{i:06d}",
        owners=count if distinct_owners else 1,
        name=prefix + " <{i}> & 🐱",
    )
    return [(t.avatar.owner.telegram_id, t.fal_request_id) for t in trainings]


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


def _write_messages(count: int, prefix: str) -> dict[int, float]:
    """Owner messages written by the transitions themselves (trainings completing).

    Returns chat id -> the time the completion began. The trainings are made first, so
    only the completion (and the message it writes and queues) is timed.
    """
    from monitoring import transitions
    from monitoring.models import EventSource, Training

    made = _make_trainings(count, prefix, distinct_owners=True)
    trainings = Training.objects.select_related("avatar__owner").in_bulk(
        [r for _c, r in made], field_name="fal_request_id"
    )
    written: dict[int, float] = {}
    for chat_id, request_id in made:
        written[chat_id] = time.time()
        transitions.complete(
            trainings[request_id],
            lora_url="https://v3.fal.media/files/bench/lora.safetensors",
            source=EventSource.WEBHOOK,
        )
    return written


def _deliver_tasks(since) -> tuple[int, int]:
    """(deliver tasks run since ``since``, how many of them did nothing)."""
    from django_q.models import Task

    results = list(
        Task.objects.filter(func="notifications.delivery.deliver", started__gte=since).values_list(
            "result", flat=True
        )
    )
    idle = sum(1 for r in results if r in IDLE_RESULTS)
    return len(results), idle


# What ``notifications.delivery.deliver`` answers when it had nothing to do.
IDLE_RESULTS = {"not due or claimed elsewhere", "no such notification", "paused"}


def _outage(telegram, *, backlog: int, seconds: float, probes: int, gap: float) -> dict:
    """Scenario 4: an outage with a backlog building up, then recovery."""
    from django.utils import timezone

    since = timezone.now()
    telegram.outage(502)
    started = time.monotonic()
    waiting = _write_messages(backlog, "outage")
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    during = telegram.state.outage_calls.copy()
    telegram.outage(None)
    recovered = time.time()
    fresh: dict[int, float] = {}
    for i in range(probes):
        fresh.update(_write_messages(1, f"after-{i}"))
        time.sleep(gap)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = {m.chat_id: m.received_at for m in telegram.messages}
        if all(c in got for c in waiting) and all(c in got for c in fresh):
            break
        time.sleep(0.1)
    got = {m.chat_id: m.received_at for m in telegram.messages}
    arrived = sorted(got[c] for c in waiting if c in got)
    time.sleep(1)  # the last tasks' results are saved
    tasks, idle = _deliver_tasks(since)
    return {
        "tasks": tasks,
        "idle": idle,
        "during": during,
        "arrived": len(arrived),
        "drained_after": (arrived[-1] - recovered) if arrived else float("inf"),
        "rate": (len(arrived) - 1) / (arrived[-1] - arrived[0]) if len(arrived) > 1 else 0.0,
        "fresh": [got[c] - t for c, t in fresh.items() if c in got],
        "fresh_missing": sum(1 for c in fresh if c not in got),
    }


def _handshake(telegram, sends: int) -> dict[str, list[float]]:
    """Scenario 5: per-send latency, a new client per message vs one per process."""
    import asyncio

    from telegram import Bot
    from telegram.request import HTTPXRequest

    from notifications.backends.telegram import TelegramBackend, close_connection

    async def fresh_client_send(chat_id: int) -> None:
        async with HTTPXRequest() as request:
            bot = Bot(telegram.token, base_url=telegram.base_url, request=request)
            await bot.send_message(chat_id, "handshake <b>before</b>", parse_mode="HTML")

    before: list[float] = []
    opened = telegram.connections
    for i in range(sends):
        began = time.perf_counter()
        asyncio.run(fresh_client_send(7_000_000 + i))
        before.append(time.perf_counter() - began)
    before_connections = telegram.connections - opened

    backend = TelegramBackend()
    backend.base_url = telegram.base_url
    after: list[float] = []
    opened = telegram.connections
    for i in range(sends):
        began = time.perf_counter()
        backend.send(7_100_000 + i, "handshake <b>after</b>")
        after.append(time.perf_counter() - began)
    after_connections = telegram.connections - opened
    close_connection()
    return {
        "before": before,
        "after": after,
        "connections": [before_connections, after_connections],
    }


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
    parser.add_argument("--backlog", type=int, default=400, help="messages waiting in the outage")
    parser.add_argument("--outage-seconds", type=float, default=60.0)
    parser.add_argument("--handshake-sends", type=int, default=50)
    parser.add_argument(
        "--only",
        default="quiet,busy,rate,outage,handshake",
        help="comma-separated scenarios to run (default: all)",
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))

    server_url = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
    db_name, db_url = create_database(server_url, "bench_notifications")
    work_dir = Path(tempfile.mkdtemp(prefix="bench-notifications-"))
    from fakes.fal_emulator import FalEmulator
    from fakes.telegram_api import FakeTelegramAPI

    emulator = FalEmulator(
        status_latency=args.status_latency, adopt_unknown=True, state_dir=work_dir / "fal"
    ).start()
    telegram = FakeTelegramAPI(token="7700000077:BENCH-token-xyz", tls_dir=work_dir / "tls").start()
    # One CA bundle trusting both fakes (and the public roots, for anything else).
    import certifi

    bundle = work_dir / "ca-bundle.pem"
    bundle.write_text(
        Path(certifi.where()).read_text()
        + Path(emulator.cert_file).read_text()
        + Path(telegram.cert_file).read_text()
    )
    port = free_port()
    env = production_env(
        db_url,
        **{**emulator.env(), "SSL_CERT_FILE": str(bundle)},
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
        # The one documented worker: both roles (checks, notifications) in one command.
        processes.append(_start([python, "manage.py", "qcluster"], env, work_dir / "qcluster.log"))
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
        print(f"processes up (logs in {work_dir})", flush=True)
        results: dict = {}

        if "quiet" in only:
            print("scenario 1: quiet", flush=True)
            results["quiet"] = _measure_webhooks(port, emulator.signer, telegram, quiet, args.gap)

        if "busy" in only:
            print(f"scenario 2: creating {args.busy} active trainings …", flush=True)
            before = set(CheckRun.objects.values_list("pk", flat=True))
            _make_trainings(args.busy, "busy", distinct_owners=False)
            # The scheduled run may already have claimed some; this one takes the rest.
            async_task("monitoring.tasks.run_check", "manual")
            new_runs = CheckRun.objects.exclude(pk__in=before)
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and sum(new_runs.values_list("due", flat=True)) < args.busy
            ):
                time.sleep(0.1)

            def runs_going() -> int:
                return new_runs.filter(finished_at__isnull=True).count() + _main_queue_backlog()

            going_start = runs_going()
            busy = _measure_webhooks(port, emulator.signer, telegram, busy_probes, args.gap)
            going_end = runs_going()
            claimed = sum(new_runs.values_list("due", flat=True))

            # Baseline, same check run: what a shared queue would do. The worker runs
            # the checks role only, and each message's task goes to the main queue.
            stop_group(processes.pop())
            processes.append(
                _start(
                    [python, "manage.py", "qcluster", "--only", "checks"],
                    env,
                    work_dir / "qcluster-checks-only.log",
                )
            )
            from notifications.models import Notification as _N

            def to_main_queue(request_id: str) -> None:
                row = (
                    _N.objects.filter(training__fal_request_id=request_id)
                    .values_list("pk", flat=True)
                    .first()
                )
                if row is not None:
                    async_task("notifications.delivery.deliver", row)

            shared = _measure_webhooks(
                port, emulator.signer, telegram, shared_probes, args.gap, after_post=to_main_queue
            )
            shared_going = runs_going()
            stop_group(processes.pop())
            processes.append(
                _start([python, "manage.py", "qcluster"], env, work_dir / "qcluster-2.log")
            )
            results["busy"] = (busy, shared, claimed, going_start, going_end, shared_going)
            results["status_calls"] = sum(emulator.status_calls.values())
            time.sleep(3)  # the restarted cluster's workers and relay come up

        if "rate" in only:
            print(f"scenario 3: {args.burst} messages at once …", flush=True)
            from notifications.models import RateLimitMark

            telegram_before = len(telegram.messages)
            _write_messages(args.burst, "rate")
            deadline = time.monotonic() + 120
            while (
                time.monotonic() < deadline
                and len(telegram.messages) - telegram_before < args.burst
            ):
                time.sleep(0.1)
            burst = sorted(m.received_at for m in telegram.messages[telegram_before:])
            slots = sorted(
                t.timestamp()
                for t in RateLimitMark.objects.filter(chat_id__gte=5_000_000).values_list(
                    "sent_at", flat=True
                )
            )[-args.burst :]
            busiest_slots = (
                max(sum(1 for t in slots if s <= t < s + 1.0) for s in slots) if slots else 0
            )
            busiest = max(sum(1 for t in burst if s <= t < s + 1.0) for s in burst) if burst else 0
            rate = (len(burst) - 1) / (burst[-1] - burst[0]) if len(burst) > 1 else 0.0
            results["rate"] = (len(burst), rate, busiest, busiest_slots)

        if "outage" in only:
            print(
                f"scenario 4: a {args.outage_seconds:g} s Bot API outage with "
                f"{args.backlog} messages waiting …",
                flush=True,
            )
            results["outage"] = _outage(
                telegram,
                backlog=args.backlog,
                seconds=args.outage_seconds,
                probes=args.probes,
                gap=args.gap,
            )

        if "handshake" in only:
            print(f"scenario 5: {args.handshake_sends} sends, handshakes …", flush=True)
            results["handshake"] = _handshake(telegram, args.handshake_sends)
        connections.close_all()
    finally:
        for process in reversed(processes):
            stop_group(process)
        telegram.stop()
        emulator.stop()
        drop_database(server_url, db_name)
    return _report(results, args)


def _report(results: dict, args) -> int:
    global_rate = int(os.environ.get("NOTIFICATION_RATE_GLOBAL_PER_SECOND", "25"))

    def line(label, lat, bad):
        if not lat:
            return f"{label:34}no messages received ({bad} missing)"
        return (
            f"{label:34}{len(lat):>5}{statistics.median(lat) * 1000:>9.0f}"
            f"{_percentile(lat, 0.95) * 1000:>9.0f}{max(lat) * 1000:>9.0f}{bad:>9}"
        )

    def p95_ok(lat, bad) -> bool:
        return bool(lat) and _percentile(lat, 0.95) <= 2.0 and not bad

    targets: dict[str, bool] = {}
    print()
    print(
        "webhook arrival → fake Bot API receipt over HTTPS (gunicorn 2 workers; one qcluster "
        f"with default workers: checks 2, notifications "
        f"{os.environ.get('NOTIFICATION_WORKERS', '4')}; PostgreSQL)"
    )
    print(f"{'':34}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'missing':>9}")
    if "quiet" in results:
        print(line("1. quiet", *results["quiet"]))
        targets["quiet p95 <= 2 s"] = p95_ok(*results["quiet"])
    if "busy" in results:
        busy, shared, claimed, going_start, going_end, shared_going = results["busy"]
        print(line(f"2. during a {args.busy}-training check run", *busy))
        print(
            f"   check runs claimed {claimed} trainings; unfinished runs + main queue backlog: "
            f"{going_start} at the start, {going_end} at the end; fal status calls so far "
            f"{results['status_calls']}"
        )
        print(line("   baseline: same, one shared queue", *shared))
        print(f"   (unfinished runs + main queue backlog at its end: {shared_going})")
        targets["busy p95 <= 2 s"] = p95_ok(*busy)
        targets["check run going all through 2 and baseline"] = (
            min(going_start, going_end, shared_going) > 0
        )
    if "rate" in results:
        count, rate, busiest, busiest_slots = results["rate"]
        print(
            f"3. {count}/{args.burst} messages to distinct chats: sustained {rate:.1f} msg/s, "
            f"busiest 1-s window {busiest} at the fake, {busiest_slots} in the limiter "
            f"(limit {global_rate})"
        )
        targets[f"at most {global_rate} per second"] = busiest <= global_rate
        targets["every burst message arrived once"] = count == args.burst
    if "outage" in results:
        out = results["outage"]
        print(
            f"4. {args.outage_seconds:g} s outage, {args.backlog} waiting: requests during it "
            f"{out['during']}; backlog {out['arrived']}/{args.backlog} sent "
            f"{out['drained_after']:.1f} s after recovery at {out['rate']:.1f} msg/s "
            f"({out['rate'] / global_rate:.0%} of {global_rate}/s)"
        )
        print(line("   new messages after recovery", out["fresh"], out["fresh_missing"]))
        share = out["idle"] / out["tasks"] if out["tasks"] else 0.0
        print(
            f"   deliver tasks run from the outage's start: {out['tasks']}, of which "
            f"{out['idle']} did nothing ({share:.1%})"
        )
        targets["at most 5% of deliver tasks did nothing"] = share <= 0.05
        targets["backlog sent within 25 s of recovery"] = (
            out["arrived"] == args.backlog and out["drained_after"] <= 25.0
        )
        targets["backlog at >= 20 msg/s"] = out["rate"] >= 20.0
        targets["new messages p95 <= 2 s after recovery"] = p95_ok(
            out["fresh"], out["fresh_missing"]
        )
    if "handshake" in results:
        hs = results["handshake"]
        before, after = hs["before"], hs["after"]
        print(
            f"5. {len(before)} sequential sends over HTTPS from one process, per send "
            f"(p50 / p95 ms): new client per message (before) "
            f"{statistics.median(before) * 1000:.1f} / {_percentile(before, 0.95) * 1000:.1f} "
            f"with {hs['connections'][0]} connections; one connection per process (after) "
            f"{statistics.median(after) * 1000:.1f} / {_percentile(after, 0.95) * 1000:.1f} "
            f"with {hs['connections'][1]} connection(s)"
        )
        targets["one connection for every send of a process"] = hs["connections"][1] == 1
    for name, met in targets.items():
        print(f"  {'met ' if met else 'MISSED'} {name}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
