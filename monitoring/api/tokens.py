"""API tokens and callback secrets: made once, shown once, tokens kept only as a hash.

``ClientToken`` checks ``Authorization: Bearer <token>``, the client's rate limit and its
scope, in that order. The limit, ``API_RATE_LIMIT_PER_MINUTE`` calls in a fixed minute,
keeps nothing in process memory: a Redis counter with ``REDIS_URL``, else a count from the
call log that the token's own lookup reads. See docs/api.md#the-call-log-and-the-rate-limit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from monitoring.api import middleware
from monitoring.api.middleware import ApiError
from monitoring.api.models import ApiCall, ApiClient, Scope
from notifications import rate_limits

TOKEN_PREFIX = "atm_"
# ``last_used_at`` is written at most this often, not on every call.
_LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewClient:
    client: ApiClient
    token: str
    callback_secret: str


def validate_scopes(scopes: list[str]) -> list[str]:
    known = {choice.value for choice in Scope}
    unknown = [scope for scope in scopes if scope not in known]
    if unknown:
        raise ValueError(
            f"unknown scope(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return sorted(set(scopes))


def create_client(
    *,
    name: str,
    scopes: list[str],
    callback_url: str = "",
    callback_stuck: bool = False,
    daily_budget_usd: Decimal | None = None,
) -> NewClient:
    """Create a client with a fresh token and callback secret: the only time both exist in
    the clear on our side."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    # A Standard Webhooks secret: ``whsec_`` and base64 of 32 random bytes.
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with transaction.atomic():  # a savepoint: a taken name leaves the caller's transaction usable
        client = ApiClient.objects.create(
            name=name,
            scopes=validate_scopes(scopes),
            token_hash=hash_token(token),
            token_prefix=token[: len(TOKEN_PREFIX) + 4],
            callback_url=callback_url,
            callback_secret=secret,
            callback_stuck=callback_stuck,
            daily_budget_usd=daily_budget_usd,
        )
    return NewClient(client, token, secret)


def authenticate(token: str, *, count_since: datetime | None = None) -> ApiClient | None:
    """The active client whose token this is, or None (compared in constant time). With
    ``count_since``, ``client.calls_in_window`` is this call's number since then (one read)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    if count_since is None:
        client = ApiClient.objects.filter(token_hash=digest, revoked_at__isnull=True).first()
    else:
        # Counted up to one past the limit: a flood costs no more to refuse.
        cap = settings.API_RATE_LIMIT_PER_MINUTE + 1
        client = next(
            iter(ApiClient.objects.raw(_AUTHENTICATE_AND_COUNT, [count_since, cap, digest])), None
        )
        if client is not None:
            client.calls_in_window += 1  # type: ignore[attr-defined]
    if client is None or not hmac.compare_digest(client.token_hash, digest):
        return None
    now = timezone.now()
    if client.last_used_at is None or client.last_used_at < now - _LAST_USED_RESOLUTION:
        ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)
        client.last_used_at = now
    return client


# The client by its token and its calls in the window, in one read-only statement.
_AUTHENTICATE_AND_COUNT = f"""
SELECT c.*, (
    SELECT COUNT(*) FROM (
        SELECT 1 FROM {ApiCall._meta.db_table} WHERE client_id = c.id AND at >= %s LIMIT %s
    ) AS w
) AS calls_in_window
FROM {ApiClient._meta.db_table} c WHERE c.token_hash = %s AND c.revoked_at IS NULL
"""
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
        client = authenticate(token.strip(), count_since=count_since)
        if client is None:
            return None
        # Recorded by the call-log middleware, whatever the answer.
        request.api_client = client  # type: ignore[attr-defined]
        if count_since is None:
            key = f"{settings.Q_CLUSTER['name']}:api-rate:{client.pk}:{int(window.timestamp())}"
            with rate_limits.redis_client().pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS * 2)
                calls = int(pipe.execute()[0])
        else:  # and this process's calls not written yet
            calls = client.calls_in_window  # type: ignore[attr-defined]
            calls += middleware.pending(client.pk, window)
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
