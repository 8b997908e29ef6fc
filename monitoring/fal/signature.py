"""Is this POST a delivery fal signed, now, for our account? No database here. The body
is read bounded and parsed only once verified (``shared/fal-facts.md``, Webhooks)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from monitoring.fal import signing_keys
from monitoring.models import WebhookVerdict

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"
# Each signed header cut to its real length when stored (UUIDs, Unix seconds, hex).
SIGNED_HEADERS = {
    REQUEST_ID_HEADER: 128,
    USER_ID_HEADER: 128,
    TIMESTAMP_HEADER: 16,
    SIGNATURE_HEADER: 128,
}
# What a verified delivery keeps of its other headers: fal's own and what traces it.
KEPT_HEADERS = "Content-Type Content-Length Transfer-Encoding User-Agent X-Forwarded-For X-Real-Ip"
MAX_KEPT_HEADERS = 20
READ_CHUNK_BYTES = 64 * 1024

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Refused(Exception):
    """Bad input: answered with ``status`` and ``reason``; changes nothing."""

    def __init__(
        self,
        status: int,
        reason: str,
        verdict: str = WebhookVerdict.VALID,
        partial: bytes = b"",
        size: int | None = None,
    ):
        super().__init__(reason)
        self.status, self.reason, self.verdict, self.partial = status, reason, verdict, partial
        self.size = len(partial) if size is None else size  # bytes sent, as far as known


def clean(text: str, limit: int | None = None) -> str:
    """Text as PostgreSQL stores it: no NUL characters, no lone surrogates."""
    return _SURROGATE.sub("\ufffd", text.replace("\x00", "\ufffd"))[:limit]


def clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [clean_json(item) for item in value]
    if isinstance(value, dict):
        return {clean(str(k)): clean_json(v) for k, v in value.items()}
    return value


def signed_headers(request: HttpRequest) -> dict[str, str]:
    """The signed headers as sent, the signature in lower case (a case variant is a replay)."""
    found = {name: str(request.headers[name]) for name in SIGNED_HEADERS if name in request.headers}
    signature = found.get(SIGNATURE_HEADER, "").strip()
    if _SIGNATURE.fullmatch(signature):
        found[SIGNATURE_HEADER] = signature.lower()
    return found


def stored_headers(request: HttpRequest, *, verified: bool) -> dict[str, str]:
    """What a row keeps: the signed headers cut to length, plus fal's own when verified."""
    kept = {
        name: clean(value, SIGNED_HEADERS[name]) for name, value in signed_headers(request).items()
    }
    if verified:
        for name, value in request.headers.items():
            title = name.title()
            ours = title.startswith("X-Fal-") or title in KEPT_HEADERS.split()
            if len(kept) < MAX_KEPT_HEADERS and title not in kept and ours:
                kept[clean(title, 64)] = clean(str(value), 512)
    return kept


def read_body(request: HttpRequest, limit: int) -> bytes:
    """The raw body, or ``Refused``: 413 beyond ``limit``, 400 when it cannot be read whole.
    Counted while read, so Django's upload limit never answers for us."""
    raw = str(request.META.get("CONTENT_LENGTH") or "").strip()
    declared = int(raw) if raw.isascii() and raw.isdigit() else None
    if declared is not None and declared > limit:
        reason = f"body of {declared} bytes is larger than the {limit} bytes allowed"
        raise Refused(413, reason, WebhookVerdict.TOO_LARGE, size=declared)
    stream: Any = request
    environ = getattr(request, "environ", {})
    if declared is None and environ.get("wsgi.input_terminated"):
        stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit and (chunk := stream.read(min(READ_CHUNK_BYTES, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    except Exception as exc:  # the server's parser: bad chunk sizes, a dropped connection
        raise Refused(
            400,
            f"body could not be read ({type(exc).__name__}): malformed chunked encoding "
            "or a connection closed early",
            WebhookVerdict.UNREADABLE,
            b"".join(chunks),
        ) from None
    body = b"".join(chunks)
    if size > limit:
        reason = f"body is larger than the {limit} bytes allowed"
        raise Refused(413, reason, WebhookVerdict.TOO_LARGE, body[:limit], size)
    if declared is not None and size < declared:
        reason = f"body is truncated: {size} of {declared} bytes"
        raise Refused(400, reason, WebhookVerdict.UNREADABLE, body)
    return body


def verify(headers: dict[str, str], body: bytes) -> None:
    """Raise ``Refused`` unless the delivery is signed by fal, now, for our account."""
    if missing := [name for name in SIGNED_HEADERS if not headers.get(name)]:
        raise Refused(401, f"missing headers: {', '.join(missing)}", WebhookVerdict.MISSING_HEADERS)
    timestamp = headers[TIMESTAMP_HEADER]
    if not _TIMESTAMP.fullmatch(timestamp):
        raise Refused(401, "timestamp is not Unix seconds", WebhookVerdict.STALE)
    if abs(time.time() - int(timestamp)) > settings.WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS:
        raise Refused(401, "timestamp outside the allowed window", WebhookVerdict.STALE)
    signature = headers[SIGNATURE_HEADER]
    if not _SIGNATURE.fullmatch(signature):
        raise Refused(401, "signature is not a hex Ed25519 signature", WebhookVerdict.BAD_SIGNATURE)
    lines = [headers[REQUEST_ID_HEADER], headers[USER_ID_HEADER], timestamp]
    message = "\n".join([*lines, hashlib.sha256(body).hexdigest()]).encode(errors="replace")
    try:
        valid = signing_keys.verify(message, bytes.fromhex(signature))
    except signing_keys.KeysUnavailable:
        # Our problem, not the sender's: 503, so that fal retries later.
        reason = "signing keys unavailable, retry later"
        raise Refused(503, reason, WebhookVerdict.UNVERIFIABLE) from None
    if not valid:
        raise Refused(401, "bad signature", WebhookVerdict.BAD_SIGNATURE)
    ours = settings.FAL_WEBHOOK_USER_ID
    if ours and headers[USER_ID_HEADER] != ours:
        # Signed by fal, but for somebody else's job: not ours to apply.
        raise Refused(401, "delivery is for another fal account", WebhookVerdict.OTHER_ACCOUNT)


def parse(body: bytes, header_request_id: str) -> dict[str, Any]:
    """The verified body in fal's delivery shape, or ``Refused`` (400). ``NaN``, ``1e400``
    and lone surrogates, which jsonb refuses, become ``null`` and U+FFFD: fal would retry."""
    try:
        data = json.loads(
            body.decode("utf-8", errors="replace"),
            parse_constant=lambda _text: None,
            parse_float=lambda text: float(text) if math.isfinite(float(text)) else None,
        )
    except (ValueError, RecursionError):
        raise Refused(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "body is not a JSON object")
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise Refused(400, "missing request_id")
    if request_id != header_request_id:
        raise Refused(400, "request_id does not match the X-Fal-Webhook-Request-Id header")
    if data.get("status") not in ("OK", "ERROR"):
        raise Refused(400, "status must be OK or ERROR")
    return clean_json(data)
