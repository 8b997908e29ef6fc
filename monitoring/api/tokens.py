"""API tokens and callback secrets: made once, shown once, tokens kept only as a hash."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from monitoring.api.models import ApiCall, ApiClient, Scope

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
