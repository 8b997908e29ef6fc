"""fal's webhook signing keys: fetched from its JWKS, cached in the database for every worker.
See docs/architecture.md#the-webhook-order.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from monitoring.models import FalSigningKeys

logger = logging.getLogger("monitoring")

# How long expired keys may still verify while fal's JWKS endpoint keeps failing.
STALE_GRACE = timedelta(hours=1)
# Bounded well below fal's 15 s delivery timeout: the fetch happens inside a request.
FETCH_TIMEOUT_SECONDS = 5.0
# A JWKS is a few hundred bytes; anything much larger is not one.
MAX_JWKS_BYTES = 64 * 1024


class KeysUnavailable(Exception):
    """No usable key at all: never fetched, and fal's endpoint cannot be reached now."""


@dataclass(frozen=True)
class _Cached:
    fetched_at: datetime
    keys: tuple[Ed25519PublicKey, ...]


_memo: dict[str, _Cached] = {}
_memo_lock = threading.Lock()


def forget() -> None:
    """Drop this process's in-memory copy (tests; the database row is untouched)."""
    with _memo_lock:
        _memo.clear()


def parse_jwks(document: object) -> list[dict]:
    """The Ed25519 entries of a JWKS document whose ``x`` decodes to a 32-byte key."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    usable = []
    for entry in [entry for entry in document["keys"] if isinstance(entry, dict)]:
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        with contextlib.suppress(ValueError):  # an unusable key is skipped
            _public_key(entry)
            usable.append({k: entry[k] for k in ("kty", "crv", "x", "kid") if k in entry})
    if not usable:
        raise ValueError("the JWKS holds no usable Ed25519 key")
    return usable


def _public_key(entry: dict) -> Ed25519PublicKey:
    x = entry.get("x")
    if not isinstance(x, str):
        raise ValueError("key without 'x'")
    try:
        # fal publishes x without padding; urlsafe_b64decode insists on it.
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"'x' is not base64url: {exc}") from None
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def _load_row(url: str) -> FalSigningKeys | None:
    return FalSigningKeys.objects.filter(url=url).first()


def _remember(row: FalSigningKeys) -> _Cached | None:
    if not row.keys or row.fetched_at is None:
        return None
    cached = _Cached(row.fetched_at, tuple(_public_key(entry) for entry in row.keys))
    with _memo_lock:
        _memo[row.url] = cached
    return cached


def refresh(url: str | None = None) -> bool:
    """Fetch the JWKS if the rate limit allows; True when new keys were stored."""
    import httpx  # trusts SSL_CERT_FILE, like fal-client: the emulator's cert in tests

    url = url or settings.FAL_WEBHOOK_JWKS_URL
    now = timezone.now()
    # One fetch per interval across all workers: a conditional UPDATE decides who.
    FalSigningKeys.objects.get_or_create(url=url)
    interval = timedelta(seconds=settings.FAL_JWKS_REFRESH_MIN_INTERVAL_SECONDS)
    due = Q(last_attempt_at__isnull=True) | Q(last_attempt_at__lte=now - interval)
    # An empty last_error marks the fetch as in flight for workers waiting on it.
    if not FalSigningKeys.objects.filter(due, url=url).update(last_attempt_at=now, last_error=""):
        return False
    try:
        keys = parse_jwks(json.loads(_download(httpx, url)))
    except (httpx.HTTPError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
        FalSigningKeys.objects.filter(url=url).update(last_error=error)
        logger.warning("fal JWKS fetch from %s failed: %s", url, error)
        return False
    FalSigningKeys.objects.filter(url=url).update(keys=keys, fetched_at=now, last_error="")
    logger.info("fal JWKS fetched from %s: %d key(s)", url, len(keys))
    _remember(FalSigningKeys(url=url, keys=keys, fetched_at=now))
    return True


def _download(httpx, url: str) -> bytes:
    """The JWKS body, streamed: refused as soon as it is seen to pass ``MAX_JWKS_BYTES``."""
    with httpx.stream(
        "GET", url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False
    ) as response:
        response.raise_for_status()
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_JWKS_BYTES:
            raise ValueError(f"the JWKS is {declared} bytes, more than {MAX_JWKS_BYTES} expected")
        received = bytearray()
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > MAX_JWKS_BYTES:
                raise ValueError(f"the JWKS is more than {MAX_JWKS_BYTES} bytes")
    return bytes(received)


def _await_other_fetch(url: str, cached: _Cached | None) -> _Cached | None:
    """Wait (briefly) for a fetch another worker has in flight, and use its keys."""
    known = cached.fetched_at if cached else None
    deadline = time.monotonic() + FETCH_TIMEOUT_SECONDS + 1
    while time.monotonic() < deadline:
        row = _load_row(url)
        if row is None or row.last_attempt_at is None:
            return None
        if row.fetched_at is not None and row.fetched_at != known:
            return _remember(row)
        if row.last_error:
            return None  # that fetch is over and failed: nothing to wait for
        time.sleep(0.05)
    return None


def _usable(cached: _Cached | None, now: datetime, *, allow_stale: bool) -> bool:
    if cached is None:
        return False
    age, limit = now - cached.fetched_at, timedelta(seconds=settings.FAL_JWKS_CACHE_SECONDS)
    return age < limit or (allow_stale and age < limit + STALE_GRACE)


def _verifies(cached: _Cached | None, message: bytes, signature: bytes) -> bool:
    for key in cached.keys if cached else ():
        with contextlib.suppress(InvalidSignature):
            key.verify(signature, message)
            return True
    return False


def verify(message: bytes, signature: bytes) -> bool:
    """Whether a key of fal's verifies (``KeysUnavailable`` when there is none to try)."""
    url = settings.FAL_WEBHOOK_JWKS_URL
    now = timezone.now()
    cached = _memo.get(url)
    if _usable(cached, now, allow_stale=False) and _verifies(cached, message, signature):
        return True

    # A miss, or our copy is old: another worker may have refetched already.
    row = _load_row(url)
    if row is not None and (cached is None or row.fetched_at != cached.fetched_at):
        cached = _remember(row) or cached
        if _usable(cached, now, allow_stale=False) and _verifies(cached, message, signature):
            return True

    # Expired, missing, or no key verifies (fal may have rotated): refetch, rate limited.
    if refresh(url):
        return _verifies(_memo.get(url), message, signature)

    # fal's endpoint is down or we fetched a moment ago: the keys we have decide.
    if _usable(cached, now, allow_stale=True):
        return _verifies(cached, message, signature)
    # Nothing usable, and another worker holds the fetch (a cold start under load).
    cached = _await_other_fetch(url, cached) or cached
    if _usable(cached, timezone.now(), allow_stale=True):
        return _verifies(cached, message, signature)
    if cached is not None:
        logger.error("fal JWKS at %s is older than allowed and cannot be refetched", url)
    raise KeysUnavailable(f"no usable fal signing keys from {url}")
