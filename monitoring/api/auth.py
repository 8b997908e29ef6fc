"""``Authorization: Bearer <token>``, the client's scope and its rate limit, in that order."""

from __future__ import annotations

import math

from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from monitoring.api import call_log, rate_limit, tokens
from monitoring.api.errors import ApiError
from monitoring.api.models import ApiClient


class ClientToken(HttpBearer):
    """Authenticates an API client and requires ``scope``.

    Runs before the request's parameters are validated, so an unauthenticated or
    out-of-scope call is 401/403 whatever its body.
    """

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def authenticate(self, request: HttpRequest, token: str) -> ApiClient | None:
        now = timezone.now()
        # Without Redis, the token's own lookup counts the calls in the window.
        window = rate_limit.window_start(now) if rate_limit.counted_in_database() else None
        client = tokens.authenticate(token.strip(), count_since=window)
        if client is None:
            return None
        # Recorded by the call-log middleware, whatever the answer.
        request.api_client = client  # type: ignore[attr-defined]
        counted = client.calls_in_window  # type: ignore[attr-defined]
        if counted is not None and window is not None:
            counted += call_log.pending(client.pk, window)  # not written yet
        wait = rate_limit.take(client.pk, now=now, counted=counted)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                "Too many calls; try again after Retry-After seconds.",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        if not client.has_scope(self.scope):
            raise ApiError(403, "insufficient_scope", f"This token lacks the {self.scope} scope.")
        return client
