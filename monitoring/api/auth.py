"""``Authorization: Bearer <token>``, the client's scope and its rate limit, in that order.

The limit, ``API_RATE_LIMIT_PER_MINUTE`` calls in a fixed minute, keeps nothing in process
memory: a Redis counter with ``REDIS_URL``, else a count from the call log that the token's
own lookup reads. See docs/api.md#the-call-log-and-the-rate-limit.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from monitoring.api import call_log, tokens
from monitoring.api.errors import ApiError
from monitoring.api.models import ApiClient
from notifications import rate_limits

WINDOW_SECONDS = 60


class ClientToken(HttpBearer):
    """Runs before the parameters are validated: an unauthenticated or out-of-scope call
    is 401/403 whatever its body."""

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def authenticate(self, request: HttpRequest, token: str) -> ApiClient | None:
        now = timezone.now()
        window = now.replace(second=0, microsecond=0)
        count_since = None if settings.REDIS_URL else window
        client = tokens.authenticate(token.strip(), count_since=count_since)
        if client is None:
            return None
        # Recorded by the call-log middleware, whatever the answer.
        request.api_client = client  # type: ignore[attr-defined]
        if count_since is None:
            calls = _count_in_redis(client.pk, window)
        else:  # and this process's calls not written yet
            calls = client.calls_in_window  # type: ignore[attr-defined]
            calls += call_log.pending(client.pk, window)
        if calls > settings.API_RATE_LIMIT_PER_MINUTE:
            wait = max(1.0, (window + timedelta(seconds=WINDOW_SECONDS) - now).total_seconds())
            raise ApiError(
                429,
                "rate_limited",
                "Too many calls; try again after Retry-After seconds.",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        if not client.has_scope(self.scope):
            raise ApiError(403, "insufficient_scope", f"This token lacks the {self.scope} scope.")
        return client


def _count_in_redis(client_id: int, start: datetime) -> int:
    key = f"{settings.Q_CLUSTER['name']}:api-rate:{client_id}:{int(start.timestamp())}"
    with rate_limits.redis_client().pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS * 2)
        calls, _ = pipe.execute()
    return int(calls)
