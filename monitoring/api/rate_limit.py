"""The per-client call limit, on the same store as Telegram's limits (database or Redis).

A fixed window of one minute per client (``API_RATE_LIMIT_PER_MINUTE``). Like
``notifications.rate_limits``, nothing is held in process memory: the count lives in
the database (a row per client and window, counted with one upsert) or, when
``REDIS_URL`` is set, in a Redis counter that expires with its window.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from monitoring.api.models import ApiRateWindow
from notifications import rate_limits

WINDOW_SECONDS = 60


def window_start(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def counted_in_database() -> bool:
    return not settings.REDIS_URL


def take(client_id: int, *, now: datetime | None = None, counted: int | None = None) -> float:
    """Count a call; 0.0 when it is allowed, else the seconds until the window ends.

    ``counted``: the call was counted already, with the token's lookup
    (``tokens.authenticate``), and this is the window's count after it.
    """
    limit = settings.API_RATE_LIMIT_PER_MINUTE
    now = now or timezone.now()
    start = window_start(now)
    if counted is not None:
        calls = counted
        if calls == 1:
            _clear_old_windows(client_id, start)
    elif settings.REDIS_URL:
        calls = _count_in_redis(client_id, start)
    else:
        calls = _count_in_database(client_id, start)
    if calls <= limit:
        return 0.0
    return max(1.0, (start + timedelta(seconds=WINDOW_SECONDS) - now).total_seconds())


def _count_in_database(client_id: int, start: datetime) -> int:
    # One round trip: insert the window or count on it, and read the count back
    # (PostgreSQL, and SQLite since 3.35, both have INSERT ... ON CONFLICT ... RETURNING).
    table = ApiRateWindow._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (client_id, window_start, calls) VALUES (%s, %s, 1) "
            f"ON CONFLICT (client_id, window_start) DO UPDATE SET calls = {table}.calls + 1 "
            "RETURNING calls",
            [client_id, start],
        )
        calls = cursor.fetchone()[0]
    if calls == 1:
        _clear_old_windows(client_id, start)
    return int(calls)


def _clear_old_windows(client_id: int, start: datetime) -> None:
    # The first call of a window clears the client's old ones.
    ApiRateWindow.objects.filter(
        client_id=client_id, window_start__lt=start - timedelta(minutes=5)
    ).delete()


def _count_in_redis(client_id: int, start: datetime) -> int:
    key = f"{settings.Q_CLUSTER['name']}:api-rate:{client_id}:{int(start.timestamp())}"
    with rate_limits.redis_client().pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS * 2)
        calls, _ = pipe.execute()
    return int(calls)
