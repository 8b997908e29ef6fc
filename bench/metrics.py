"""Benchmark: one Prometheus scrape of ``GET /metrics`` with N active trainings.

    .venv/bin/python bench/metrics.py --n 10000

It creates its own PostgreSQL database (on the server of DATABASE_URL, default
postgres://root@127.0.0.1:5432/root), migrates it and fills it with N active
trainings (a tenth stuck, a third in progress), N finished ones, a day of check-run
heartbeats (1,440), 2,000 notifications (a quarter of them still pending), six worker
heartbeat rows, and the running totals a busy day leaves (counters, and every bucket
of every histogram filled). Then it scrapes ``/metrics`` ``--repeat`` times
through Django's test client (the whole view: access check, collector, text
format) and prints the median and worst wall time and the SQL queries per scrape;
the baseline in the same run is ``/healthz``, the cheapest database-backed page.

Target: at N = 10,000, at most 10 queries and 100 ms per scrape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import (  # noqa: E402
    create_active_trainings,
    create_database,
    drop_database,
    production_env,
)

SERVER_URL = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
TOKEN = "bench-metrics-token-0123456789"


def _fill(n: int) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from monitoring import totals
    from monitoring.models import (
        Avatar,
        AvatarStatus,
        CheckRun,
        FalStatus,
        Training,
        WorkerHeartbeat,
    )
    from notifications.models import Audience, Notification, NotificationKind

    now = timezone.now()
    create_active_trainings(
        n,
        first_telegram_id=30_000_000,
        training_fields=lambda i: {
            "endpoint": "fal-ai/flux-lora-portrait-trainer",
            "fal_request_id": str(uuid.UUID(int=i + 1)),
            "fal_status": FalStatus.IN_PROGRESS if i % 3 == 0 else FalStatus.IN_QUEUE,
            "submitted_at": now - timedelta(minutes=5),
            "next_check_at": now + timedelta(seconds=30),
            "stuck_since": now - timedelta(minutes=20) if i % 10 == 0 else None,
        },
    )
    _avatars, finished = create_active_trainings(
        n,
        first_telegram_id=40_000_000,
        training_fields=lambda i: {
            "endpoint": "fal-ai/flux-lora-portrait-trainer",
            "fal_request_id": str(uuid.UUID(int=10**9 + i)),
            "fal_status": FalStatus.COMPLETED,
            "finished_at": now - timedelta(minutes=i % 1440),
            "outcome": "completed" if i % 5 else "error",
        },
    )
    Avatar.objects.filter(trainings__in=finished, trainings__outcome="completed").update(
        status=AvatarStatus.COMPLETED
    )
    Avatar.objects.filter(trainings__in=finished, trainings__outcome="error").update(
        status=AvatarStatus.ERROR
    )
    CheckRun.objects.bulk_create(
        [
            CheckRun(
                started_at=now - timedelta(minutes=m),
                finished_at=now - timedelta(minutes=m) + timedelta(seconds=4),
                duration_seconds=4.0,
                due=n,
                checked=n,
            )
            for m in range(1, 1441)
        ]
    )
    trainings = list(Training.objects.filter(finished_at__isnull=False)[:2000])
    Notification.objects.bulk_create(
        [
            Notification(
                dedup_key=f"bench:{t.pk}",
                kind=NotificationKind.READY,
                audience=Audience.OWNER,
                chat_id=1,
                text="ready",
                training=t,
                status="pending" if i % 4 == 0 else "sent",
                next_attempt_at=now - timedelta(seconds=i),
            )
            for i, t in enumerate(trainings)
        ]
    )
    for outcome in ("applied", "already_done", "replay", "unmatched", "deferred", "failed"):
        totals.add("webhook_deliveries", {"verdict": "valid", "outcome": outcome}, n)
    for verdict in ("bad_signature", "stale", "missing_headers", "too_large", "unverifiable"):
        totals.add("webhook_deliveries", {"verdict": verdict, "outcome": "rejected"}, 3)
    for error_class in ("FalTransient", "FalAuthError", "FalNotFound"):
        totals.add("fal_errors", {"class": error_class}, 17)
    for result in ("sent", "retry_after", "transient", "unreachable", "bad_request"):
        totals.add("notification_sends", {"result": result}, n)
    for source in ("webhook", "check", "fal_record", "staff"):
        for outcome in ("completed", "error", "cancelled"):
            totals.add("finishes", {"learned_by": source, "outcome": outcome}, n)
    # Every bucket of every histogram and label value holds something (the most rows a
    # scrape reads), one observation each plus its sum.
    trainers = ("fal-ai/flux-lora-portrait-trainer", "fal-ai/flux-lora-fast-training")
    for histogram, label, values in (
        (totals.OWNER_TOLD, "kind", ("ready", "failed", "cancelled")),
        (totals.TIME_TO_READY, "trainer", trainers),
        (totals.FAL_QUEUE, "trainer", trainers),
    ):
        for label_value in values:
            for bound in (*histogram.buckets, histogram.buckets[-1] * 2):
                totals.observe(histogram, {label: label_value}, bound)
    WorkerHeartbeat.objects.bulk_create(
        [
            WorkerHeartbeat(role=role, host=f"worker-{h}", pid=100 + h, beat_at=now)
            for role in ("checks", "notifications")
            for h in range(3)
        ]
    )
    # Statistics as the autovacuum daemon would have them on a database this size.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _measure(client, url: str, repeat: int, headers: dict) -> tuple[float, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, queries = [], 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url, headers=headers)
            times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code, response.content[:200])
        queries = len(captured)
    return statistics.median(times) * 1000, max(times) * 1000, queries


def run(n: int, repeat: int) -> None:
    name, url = create_database(SERVER_URL, "bench_metrics")
    try:
        env = production_env(url, METRICS_TOKEN=TOKEN, ALLOWED_HOSTS="testserver")
        os.environ.update(env)
        import warnings

        import django

        warnings.filterwarnings("ignore", message="No directory at")
        django.setup()
        from django.core.management import call_command
        from django.test import Client

        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        _fill(n)
        print(f"filled N = {n} in {time.perf_counter() - started:.1f} s")
        client = Client()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = client.get("/metrics", headers=auth).content.decode()  # warm up
        results = [
            ("/metrics", *_measure(client, "/metrics", repeat, auth)),
            ("BASELINE /healthz", *_measure(client, "/healthz", repeat, {})),
        ]
        print(f"\nN = {n} active trainings (+{n} finished), {repeat} scrapes each")
        print(f"{'page':<20}{'median ms':>12}{'worst ms':>12}{'queries':>10}")
        for label, median, worst, queries in results:
            print(f"{label:<20}{median:>12.1f}{worst:>12.1f}{queries:>10}")
        samples = [line for line in body.splitlines() if line and not line.startswith("#")]
        print(f"/metrics: {len(body)} bytes, {len(samples)} samples")
        active = [line for line in samples if line.startswith("avatar_monitor_trainings_active")]
        print("  " + "\n  ".join(active))
        ok = results[0][3] <= 10 and results[0][1] <= 100
        print("target (<= 10 queries, <= 100 ms median):", "met" if ok else "NOT met")
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(SERVER_URL, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="active trainings")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    run(args.n, args.repeat)


if __name__ == "__main__":
    main()
