"""The per-client call limit: ``API_RATE_LIMIT_PER_MINUTE`` calls in a fixed minute.

Nothing in process memory: a Redis counter with ``REDIS_URL``, else a count from the
call log. See docs/api.md#the-call-log-and-the-rate-limit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from notifications import rate_limits

WINDOW_SECONDS = 60


def window_start(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def counted_in_database() -> bool:
    return not settings.REDIS_URL


def take(client_id: int, *, now: datetime | None = None, counted: int | None = None) -> float:
    """Count a call; 0.0 when it is allowed, else the seconds until the window ends.

    ``counted``: this call's number in the window as the call log has it (the token's
    lookup read it); without it, the call is counted in Redis.
    """
    limit = settings.API_RATE_LIMIT_PER_MINUTE
    now = now or timezone.now()
    start = window_start(now)
    calls = counted if counted is not None else _count_in_redis(client_id, start)
    if calls <= limit:
        return 0.0
    return max(1.0, (start + timedelta(seconds=WINDOW_SECONDS) - now).total_seconds())


def _count_in_redis(client_id: int, start: datetime) -> int:
    key = f"{settings.Q_CLUSTER['name']}:api-rate:{client_id}:{int(start.timestamp())}"
    with rate_limits.redis_client().pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS * 2)
        calls, _ = pipe.execute()
    return int(calls)
