"""Benchmark: the staff pages with N avatars in the database.

    .venv/bin/python bench/admin_pages.py --n 1000 --n 10000

For each N it creates its own PostgreSQL database (on the server of DATABASE_URL,
default postgres://root@127.0.0.1:5432/root), migrates it, and fills it with N
avatars in training (a tenth of them stuck), each with its training attempt and
timeline events. Then, logged in as a superuser through Django's test client, it
renders each page ``--repeat`` times and prints the median wall time and the number
of SQL queries per render:

- the avatar changelist (first page of 50, the stuck list, a search by request id),
- the dashboard, and ``/healthz``;
- and, in the same run, a baseline: the same changelist columns in a plain
  ``ModelAdmin`` (no ``list_select_related``, no annotations), which is how a
  first version of such an admin usually looks. The ratio of the two is printed.

Target: the changelist stays a constant handful of queries whatever N, and renders
in well under a second at N=10,000 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# Read once: _django() points DATABASE_URL at the benchmark's own database.
SERVER_URL = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")


def _database_url(name: str) -> str:
    parts = urlsplit(SERVER_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def _admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(sql)


def _django(database_url: str) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "avatarsite.settings",
            "DATABASE_URL": database_url,
            "DEBUG": "0",
            "SECRET_KEY": "bench-secret-key-bench-secret-key-bench-secret-key-0123456789",
            "ALLOWED_HOSTS": "testserver",
            "SECURE_SSL_REDIRECT": "0",
            "FAL_KEY": "bench-key-id:bench-key-secret",
            "PUBLIC_BASE_URL": "http://127.0.0.1:9",
            "NOTIFICATION_BACKEND": "locmem",
            "LOG_LEVEL": "WARNING",
        }
    )
    import warnings

    import django

    warnings.filterwarnings("ignore", message="No directory at")
    django.setup()
    from django.conf import settings

    # Rendering without collectstatic, as the tests do.
    settings.STORAGES["staticfiles"] = {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
    }


def _fill(n: int) -> None:
    """N avatars in training, one attempt and three timeline events each; 10 % stuck."""
    from datetime import timedelta

    from django.utils import timezone

    from bench.scratch import create_active_trainings
    from monitoring.models import AvatarEvent, EventKind, EventSource, FalStatus

    now = timezone.now()
    avatars, trainings = create_active_trainings(
        n,
        first_telegram_id=20_000_000,
        created_at=lambda i: now - timedelta(minutes=i % 600),
        training_fields=lambda i: {
            "endpoint": "fal-ai/flux-lora-portrait-trainer",
            "fal_request_id": str(uuid.UUID(int=i + 1)),
            "fal_status": FalStatus.IN_QUEUE if i % 3 else FalStatus.IN_PROGRESS,
            "queue_position": i % 7,
            "submitted_at": now - timedelta(minutes=5),
            "last_checked_at": now - timedelta(seconds=30),
            "next_check_at": now + timedelta(seconds=30),
            "stuck_since": now - timedelta(minutes=20) if i % 10 == 0 else None,
            "stuck_reason": "in queue for more than 60 minutes" if i % 10 == 0 else "",
        },
    )
    events = []
    for avatar, training in zip(avatars, trainings, strict=True):
        for minutes, kind in (
            (10, EventKind.CREATED),
            (6, EventKind.STATUS),
            (5, EventKind.SUBMITTED),
        ):
            events.append(
                AvatarEvent(
                    avatar=avatar,
                    training=training if kind != EventKind.CREATED else None,
                    kind=kind,
                    source=EventSource.COMMAND,
                    created_at=now - timedelta(minutes=minutes),
                )
            )
    AvatarEvent.objects.bulk_create(events, batch_size=5000)


def _baseline_site():
    """The same columns in a plain ModelAdmin: each row reads its training and events."""
    from django.contrib import admin
    from django.utils import timezone
    from django.utils.timesince import timesince

    from monitoring.admin.avatars import status_badge
    from monitoring.models import Avatar

    site = admin.AdminSite(name="baseline")

    class PlainAvatarAdmin(admin.ModelAdmin):
        # Django's own page, not ours (which links to the staff site's dashboard).
        change_list_template = "admin/change_list.html"
        list_display = (
            "id",
            "name",
            "badge",
            "owner",
            "training_type",
            "age",
            "time_in_state",
            "last_check",
            "stuck_reason",
        )
        list_filter = ("status", "training_type")
        search_fields = ("name", "trainings__fal_request_id")

        def badge(self, avatar):
            return status_badge(avatar, avatar.current_training)

        def age(self, avatar):
            return timesince(avatar.created_at, timezone.now())

        def time_in_state(self, avatar):
            event = avatar.events.order_by("-created_at").first()
            return timesince(event.created_at if event else avatar.created_at, timezone.now())

        def last_check(self, avatar):
            training = avatar.current_training
            return training.last_checked_at if training else None

        def stuck_reason(self, avatar):
            training = avatar.current_training
            return training.stuck_reason if training else ""

    site.register(Avatar, PlainAvatarAdmin)
    return site


def _measure(client, url: str, repeat: int) -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, queries = [], 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
        queries = len(captured)
    return statistics.median(times) * 1000, queries


def run(n: int, repeat: int) -> list[tuple[str, float, int]]:
    name = f"bench_admin_{n}_{os.getpid()}"
    _admin_execute(f'DROP DATABASE IF EXISTS "{name}"')
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        _django(_database_url(name))
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.test import Client
        from django.urls import clear_url_caches, include, path

        call_command("migrate", verbosity=0)
        _fill(n)

        # The baseline admin under /baseline/, beside the real one.
        import avatarsite.urls as urls

        urls.urlpatterns.append(
            path("baseline/", include(_baseline_site().urls[:2], namespace="baseline"))
        )
        clear_url_caches()

        user = get_user_model().objects.create_superuser("bench", "bench@example.com", "x")
        client = Client()
        client.force_login(user)
        request_id = str(uuid.UUID(int=n // 2))
        pages = [
            ("changelist, first page", "/admin/monitoring/avatar/"),
            ("stuck list", "/admin/monitoring/avatar/?stuck=yes"),
            ("search by request id", f"/admin/monitoring/avatar/?q={request_id}"),
            ("dashboard", "/admin/monitoring/avatar/dashboard/"),
            ("/healthz", "/healthz"),
            ("BASELINE changelist", "/baseline/monitoring/avatar/"),
        ]
        for _label, url in pages:  # warm caches (templates, content types)
            client.get(url)
        return [(label, *_measure(client, url, repeat)) for label, url in pages]
    finally:
        from django.db import connections

        connections.close_all()
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, action="append", help="avatars (repeatable)")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    sizes = args.n or [1000, 10000]
    if len(sizes) > 1:
        # Django is set up once per process: one size per child process.
        import subprocess

        for n in sizes:
            subprocess.run(
                [sys.executable, __file__, "--n", str(n), "--repeat", str(args.repeat)], check=True
            )
        return
    n = sizes[0]
    results = run(n, args.repeat)
    print(f"\nN = {n} avatars ({n // 10} stuck), median of {args.repeat} renders")
    print(f"{'page':<26}{'ms':>10}{'queries':>10}")
    for label, ms, queries in results:
        print(f"{label:<26}{ms:>10.1f}{queries:>10}")
    ours = dict((label, ms) for label, ms, _q in results)
    print(
        f"changelist vs baseline: {ours['BASELINE changelist'] / ours['changelist, first page']:.1f}x faster"
    )


if __name__ == "__main__":
    main()
