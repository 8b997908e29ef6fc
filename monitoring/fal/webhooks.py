"""fal webhook deliveries: verify, record, then process through the transitions.

The order matters and is the point of this module:

1. **Size first.** ``Content-Length`` is checked before the body is read, and the
   body is read in chunks with a running count (chunked requests have no length).
   We read the raw stream ourselves, so Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``
   never turns a delivery into a 400 of its own. A malformed chunked or truncated
   body is refused with 400.
2. **Verify before trusting anything**: the four ``X-Fal-Webhook-*`` headers, the
   timestamp window, the Ed25519 signature over the exact raw body (keys from
   ``monitoring.fal.signing_keys``) and, when ``FAL_WEBHOOK_USER_ID`` is set, that the
   delivery is for our own fal account.
3. **Record every delivery, cheaply when it is refused.** Anyone can send a refused
   delivery, so its row holds only the four signed headers, the body's size, its
   SHA-256 and a 256-byte excerpt, and at most ``WEBHOOK_REFUSED_ROWS_PER_MINUTE``
   such rows are written per verdict and minute; beyond that only the per-minute
   count (``RefusedWebhookCount``) grows, so staff still see an attack. The
   signature is stored in lower case: a case variant of a signature we acted on is
   a replay, recorded and answered 200 without being processed again.
4. **Committed as received, then processed** (dj-stripe's order): a verified
   delivery for an active training is written as ``received`` in its own commit,
   then applied in a transaction that also records its outcome. A process killed in
   between leaves a ``received`` row, which the worker processes again
   (``process_stranded``, every minute); when processing raises, the transaction
   rolls back and the row says ``failed``, with the traceback, before we answer 500.
5. **Process idempotently** on the body's ``request_id``: every status change goes
   through ``monitoring.transitions`` (and result URLs through
   ``monitoring.fal.results``), whose conditional UPDATEs make a duplicate, or a
   delivery that loses the race with the periodic check, a harmless no-op.

Nothing here calls fal or Telegram: a payload fal could not serialise is left to
the worker (``monitoring.tasks.recheck``), and owner messages leave through the
notification outbox on commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import traceback as tb
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict, Unpack

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext

from avatarsite.client_address import client_address
from monitoring import owner_messages, totals, transitions
from monitoring.fal import payloads, results, signing_keys
from monitoring.models import (
    EventSource,
    RefusedWebhookCount,
    Training,
    WebhookDelivery,
    WebhookOutcome,
    WebhookVerdict,
)

logger = logging.getLogger("monitoring")

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"
SIGNED_HEADERS = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
# The real length of each signed header: a UUID request id and user id with room to
# spare, Unix seconds, a hex Ed25519 signature. Longer values are cut when stored.
SIGNED_HEADER_LENGTHS = {
    REQUEST_ID_HEADER: 128,
    USER_ID_HEADER: 128,
    TIMESTAMP_HEADER: 16,
    SIGNATURE_HEADER: 128,
}

# What we keep of a verified delivery's other headers: fal's own, and what helps
# staff trace it. Never cookies or authorization headers (whitelist, not blacklist).
KEPT_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Transfer-Encoding",
    "User-Agent",
    "X-Forwarded-For",
    "X-Real-Ip",
)
MAX_KEPT_HEADERS = 20
MAX_HEADER_VALUE = 512
# How much of a refused (or replayed) body is kept.
EXCERPT_BYTES = 256
# An unmatched signed delivery is kept whole up to this size, to be applied when its
# request id appears; a larger one keeps an excerpt and its hash, and its training
# gets a queue check instead.
UNMATCHED_BODY_BYTES = 64 * 1024
READ_CHUNK_BYTES = 64 * 1024
# fal gives up on a delivery after 15 s: a row still "received" after that belongs
# to a process that died, and the worker processes it.
STRANDED_AFTER = timedelta(seconds=15)
STRANDED_BATCH = 100

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")
_SURROGATE = re.compile("[\ud800-\udfff]")

# A delivery already acted on: the same signature again is a replay. FAILED and
# REJECTED are left out, so fal's retry of a delivery we failed to process is
# processed, not dismissed; RECEIVED too (still in flight, or stranded by a crash).
ACCEPTED_OUTCOMES = (
    WebhookOutcome.APPLIED,
    WebhookOutcome.ALREADY_DONE,
    WebhookOutcome.UNMATCHED,
    WebhookOutcome.DEFERRED,
)
# What staff may re-process from the admin.
REPROCESSABLE_OUTCOMES = (
    WebhookOutcome.FAILED,
    WebhookOutcome.UNMATCHED,
    WebhookOutcome.DEFERRED,
    WebhookOutcome.RECEIVED,
)


@dataclass(frozen=True)
class Answer:
    """What the view sends back: a status code and a small JSON body."""

    status: int
    body: dict[str, Any]

    @classmethod
    def error(cls, status: int, reason: str) -> Answer:
        return cls(status, {"error": reason})


class Refused(Exception):
    """Bad input: answered with ``status`` and ``reason``, changes nothing."""

    def __init__(self, status: int, reason: str, verdict: str = WebhookVerdict.VALID):
        super().__init__(reason)
        self.status, self.reason, self.verdict = status, reason, verdict


# --- Reading the request ------------------------------------------------------------


def _clean(text: str, limit: int) -> str:
    # PostgreSQL text and jsonb cannot hold NUL characters, nor UTF-8 lone surrogates.
    return _SURROGATE.sub("\ufffd", text.replace("\x00", "\ufffd"))[:limit]


def _clean_json(value: Any) -> Any:
    """``value`` as jsonb accepts it: NUL characters and lone surrogates become U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value.replace("\x00", "\ufffd"))
    if isinstance(value, list):
        return [_clean_json(item) for item in value]
    if isinstance(value, dict):
        return {_clean_json(k): _clean_json(v) for k, v in value.items()}
    return value


def normalised_signature(value: str) -> str:
    """The signature as stored and compared: lower-case hex, so a case variant is a replay."""
    return value.strip().lower() if _SIGNATURE.fullmatch(value.strip()) else value


def _raw_signed_headers(request: HttpRequest) -> dict[str, str]:
    """The four signed headers as sent (the signature in lower case): what is verified."""
    raw = {name: str(request.headers[name]) for name in SIGNED_HEADERS if name in request.headers}
    if SIGNATURE_HEADER in raw:
        raw[SIGNATURE_HEADER] = normalised_signature(raw[SIGNATURE_HEADER])
    return raw


def _signed_headers(request: HttpRequest) -> dict[str, str]:
    """The four signed headers, when sent, cut to their real length: what is stored."""
    return {
        name: _clean(value, SIGNED_HEADER_LENGTHS[name])
        for name, value in _raw_signed_headers(request).items()
    }


def _kept_headers(request: HttpRequest) -> dict[str, str]:
    """A verified delivery's headers worth keeping, the four signed ones first."""
    kept = _signed_headers(request)
    for name, value in request.headers.items():
        if len(kept) >= MAX_KEPT_HEADERS:
            break
        title = name.title()
        if (title.startswith("X-Fal-") or title in KEPT_HEADERS) and title not in kept:
            kept[_clean(title, 64)] = _clean(str(value), MAX_HEADER_VALUE)
    return kept


def _declared_length(request: HttpRequest) -> int | None:
    """The Content-Length, or None when absent or unreadable (then we count while reading)."""
    raw = str(request.META.get("CONTENT_LENGTH") or "").strip()
    if not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)


def _read_body(request: HttpRequest, limit: int) -> tuple[bytes, int]:
    """The raw body, at most ``limit`` bytes, and how many bytes were read (``limit + 1``
    when it was longer). Raises ``Refused`` (400) for a body that cannot be read whole.

    With a Content-Length, Django's own stream is bounded by it. Without one
    (chunked transfer), Django would read nothing, so the server's stream is read
    directly when the server says it ends the input itself (``wsgi.input_terminated``).
    """
    stream: Any = request
    environ = getattr(request, "environ", {})
    declared = _declared_length(request)
    if request.META.get("CONTENT_LENGTH") in (None, "") and environ.get("wsgi.input_terminated"):
        stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = stream.read(min(READ_CHUNK_BYTES, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except Exception as exc:  # the server's parser: bad chunk sizes, a dropped connection
        raise _Unreadable(
            f"body could not be read ({type(exc).__name__}): malformed chunked encoding "
            "or a connection closed early",
            b"".join(chunks),
        ) from None
    body = b"".join(chunks)
    if declared is not None and size < declared:
        raise _Unreadable(f"body is truncated: {size} of {declared} bytes", body)
    return body[:limit], size


class _Unreadable(Refused):
    def __init__(self, reason: str, partial: bytes):
        super().__init__(400, reason, WebhookVerdict.UNREADABLE)
        self.partial = partial


# --- Verification ------------------------------------------------------------------------


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """fal's signed text: four lines, the last the hex SHA-256 of the raw body."""
    lines = [request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]
    return "\n".join(lines).encode("utf-8", errors="replace")


def verify(headers: dict[str, str], body: bytes) -> None:
    """Raise ``Refused`` unless the delivery is signed by fal, now, for our account."""
    missing = [name for name in SIGNED_HEADERS if not headers.get(name)]
    if missing:
        raise Refused(401, f"missing headers: {', '.join(missing)}", WebhookVerdict.MISSING_HEADERS)
    timestamp = headers[TIMESTAMP_HEADER]
    if not _TIMESTAMP.fullmatch(timestamp):
        raise Refused(401, "timestamp is not Unix seconds", WebhookVerdict.STALE)
    if abs(time.time() - int(timestamp)) > settings.WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS:
        raise Refused(401, "timestamp outside the allowed window", WebhookVerdict.STALE)
    signature = headers[SIGNATURE_HEADER]
    if not _SIGNATURE.fullmatch(signature):
        raise Refused(401, "signature is not a hex Ed25519 signature", WebhookVerdict.BAD_SIGNATURE)
    message = signed_message(headers[REQUEST_ID_HEADER], headers[USER_ID_HEADER], timestamp, body)
    try:
        valid = signing_keys.verify(message, bytes.fromhex(signature))
    except signing_keys.KeysUnavailable:
        # Our problem, not the sender's: 503 so that fal retries later.
        raise Refused(
            503, "signing keys unavailable, retry later", WebhookVerdict.UNVERIFIABLE
        ) from None
    if not valid:
        raise Refused(401, "bad signature", WebhookVerdict.BAD_SIGNATURE)
    ours = settings.FAL_WEBHOOK_USER_ID
    if ours and headers[USER_ID_HEADER] != ours:
        # Signed by fal, but for somebody else's job: not ours to apply.
        raise Refused(401, "delivery is for another fal account", WebhookVerdict.OTHER_ACCOUNT)


def parse(body: bytes, header_request_id: str) -> dict[str, Any]:
    """The verified body as fal's delivery shape, or ``Refused`` (400).

    fal's own JSON may hold ``NaN``, ``Infinity`` or lone surrogates, which jsonb
    refuses; fal retries anything but a 2xx, so they are cleaned (``null``, U+FFFD)
    instead of refused.
    """
    try:
        data = json.loads(
            body.decode("utf-8", errors="replace"), parse_constant=lambda _constant: None
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
    return _clean_json(data)


# --- Recording ----------------------------------------------------------------------------


def _excerpt(body: bytes) -> str:
    return body[:EXCERPT_BYTES].decode("utf-8", errors="replace")


def _count_refusal(verdict: str, at: datetime) -> int:
    """Add one to this minute's count for ``verdict``; the count including this one."""
    minute = at.replace(second=0, microsecond=0)
    counts = RefusedWebhookCount.objects.filter(minute=minute, verdict=verdict)
    with transaction.atomic():
        if not counts.update(count=F("count") + 1):
            try:
                with transaction.atomic():
                    RefusedWebhookCount.objects.create(minute=minute, verdict=verdict, count=1)
                return 1
            except IntegrityError:  # another request created it a moment ago
                counts.update(count=F("count") + 1)
        return counts.values_list("count", flat=True).get()


def _record_capped(
    request: HttpRequest,
    headers: dict[str, str],
    *,
    verdict: str,
    outcome: str,
    body: bytes,
    body_size: int,
    error: str,
    received_at: datetime,
    data: dict[str, Any] | None = None,
    training_id: int | None = None,
) -> WebhookDelivery | None:
    """A delivery not acted on (refused, or a replay): counted, and kept as a small row
    while this minute's rows for its verdict are under the cap."""
    if _count_refusal(verdict, received_at) > settings.WEBHOOK_REFUSED_ROWS_PER_MINUTE:
        totals.add("webhook_deliveries", {"verdict": verdict, "outcome": outcome})
        return None
    return _record(
        request,
        headers,
        verdict=verdict,
        outcome=outcome,
        body=body,
        body_size=body_size,
        kept=_excerpt(body),
        error=error,
        data=data,
        training_id=training_id,
        received_at=received_at,
    )


def _record(
    request: HttpRequest,
    headers: dict[str, str],
    *,
    verdict: str,
    outcome: str,
    body: bytes,
    body_size: int,
    kept: str | None = None,
    error: str = "",
    traceback: str = "",
    data: dict[str, Any] | None = None,
    training_id: int | None = None,
    received_at: datetime,
) -> WebhookDelivery:
    """One delivery row; the body whole unless ``kept`` (an excerpt) is given."""
    data = data or {}
    text = body.decode("utf-8", errors="replace") if kept is None else kept
    delivery = WebhookDelivery.objects.create(
        received_at=received_at,
        remote_addr=client_address(request),
        headers=headers,
        header_request_id=headers.get(REQUEST_ID_HEADER, ""),
        request_id=_clean(str(data.get("request_id", "")), 128),
        signature=headers.get(SIGNATURE_HEADER, ""),
        verdict=verdict,
        outcome=outcome,
        fal_status=_clean(str(data.get("status", "")), 16),
        body=_clean(text, len(text)),
        body_size=min(body_size, 2**31 - 1),
        body_sha256=hashlib.sha256(body).hexdigest() if body_size == len(body) else "",
        error=_clean(error, 2000),
        traceback=_clean(traceback, 20000),
        processed_at=None if outcome == WebhookOutcome.RECEIVED else timezone.now(),
        training_id=training_id,
    )
    if outcome != WebhookOutcome.RECEIVED:
        # A received row is counted when its outcome is written (``_process``).
        totals.add("webhook_deliveries", {"verdict": verdict, "outcome": outcome})
    return delivery


def body_is_excerpt(delivery: WebhookDelivery) -> bool:
    """Whether the stored body is an excerpt. A whole body never encodes shorter than it
    arrived (a replaced byte grows to three), an excerpt always does."""
    return len(delivery.body.encode("utf-8")) < delivery.body_size


# --- Receiving --------------------------------------------------------------------------


def receive(request: HttpRequest) -> Answer:
    """Handle one POST to /webhooks/fal/: every delivery is recorded or counted."""
    received_at = timezone.now()
    limit = settings.WEBHOOK_MAX_BODY_BYTES
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        reason = f"body of {declared} bytes is larger than the {limit} bytes allowed"
        _record_capped(
            request,
            _signed_headers(request),
            verdict=WebhookVerdict.TOO_LARGE,
            outcome=WebhookOutcome.REJECTED,
            body=b"",
            body_size=declared,
            error=reason,
            received_at=received_at,
        )
        return Answer.error(413, reason)
    try:
        body, size = _read_body(request, limit)
        if size > limit:
            raise Refused(
                413, f"body is larger than the {limit} bytes allowed", WebhookVerdict.TOO_LARGE
            )
        verify(_raw_signed_headers(request), body)
    except Refused as refused:
        partial = refused.partial if isinstance(refused, _Unreadable) else body
        _record_capped(
            request,
            _signed_headers(request),
            verdict=refused.verdict,
            outcome=WebhookOutcome.REJECTED,
            body=partial,
            body_size=size if refused.verdict == WebhookVerdict.TOO_LARGE else len(partial),
            error=refused.reason,
            received_at=received_at,
        )
        if refused.verdict == WebhookVerdict.UNVERIFIABLE:
            logger.error("fal webhook not verifiable: %s", refused.reason)
        return Answer.error(refused.status, refused.reason)

    # Verified: from here the body is fal's.
    headers = _kept_headers(request)
    try:
        data = parse(body, headers[REQUEST_ID_HEADER])
    except Refused as refused:
        _record_capped(
            request,
            headers,
            verdict=WebhookVerdict.VALID,
            outcome=WebhookOutcome.REJECTED,
            body=body,
            body_size=len(body),
            error=refused.reason,
            received_at=received_at,
        )
        return Answer.error(refused.status, refused.reason)

    record: _Received = {
        "body": body,
        "body_size": len(body),
        "data": data,
        "received_at": received_at,
    }
    try:
        # The same signature means the same body (it is signed): an exact replay of a
        # delivery we already acted on is counted like a refusal, and not processed
        # again. Both questions, which training and whether this is a replay, take
        # one query.
        training, replay = _training_and_replay(data["request_id"], headers[SIGNATURE_HEADER])
    except Exception as exc:
        return _failed(request, headers, exc, **record)
    training_id = training.pk if training else None
    if replay:
        _record_capped(
            request,
            headers,
            verdict=WebhookVerdict.VALID,
            outcome=WebhookOutcome.REPLAY,
            error="replay of an accepted delivery with the same signature",
            training_id=training_id,
            **record,
        )
        return Answer(200, {"outcome": WebhookOutcome.REPLAY})
    if training is None:
        # Kept to be applied when the request id appears (the start of a training
        # races its own webhook), whole only up to a size worth keeping.
        whole = len(body) <= UNMATCHED_BODY_BYTES
        _record(
            request,
            headers,
            verdict=WebhookVerdict.VALID,
            outcome=WebhookOutcome.UNMATCHED,
            kept=None if whole else _excerpt(body),
            **record,
        )
        _look_again_after_commit(data["request_id"])
        return Answer(200, {"outcome": WebhookOutcome.UNMATCHED})
    if training.finished_at is not None:
        # An attempt that has finished never changes again: nothing to process.
        _record(
            request,
            headers,
            verdict=WebhookVerdict.VALID,
            outcome=WebhookOutcome.ALREADY_DONE,
            error=_finished_detail(training),
            training_id=training_id,
            **record,
        )
        return Answer(200, {"outcome": WebhookOutcome.ALREADY_DONE})

    # Committed as received before anything is applied: if this process dies from
    # here on, the row stays and the worker processes it (process_stranded).
    try:
        with transaction.atomic():
            _commit_without_waiting_for_disk()
            delivery = _record(
                request,
                headers,
                verdict=WebhookVerdict.VALID,
                outcome=WebhookOutcome.RECEIVED,
                training_id=training_id,
                **record,
            )
    except Exception as exc:
        return _failed(request, headers, exc, **record)
    outcome, _note = _process(delivery, data, training, source=EventSource.WEBHOOK, actor=None)
    if outcome == WebhookOutcome.FAILED:
        # Our own failure: 5xx so that fal delivers again.
        return Answer.error(500, "processing failed, please retry")
    return Answer(200, {"outcome": outcome})


def _commit_without_waiting_for_disk() -> None:
    """PostgreSQL: this transaction's commit does not wait for its WAL flush.

    The window this row closes is a web worker dying, and PostgreSQL has the row the
    moment it commits. Only a crash of PostgreSQL itself within a fraction of a second
    could lose it, and then nothing was answered yet: the processing transaction that
    follows commits synchronously, which flushes this row's WAL too, before fal hears
    200. It saves the second disk flush per delivery that the received-first order
    would otherwise cost (bench/webhooks.py).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _failed(
    request: HttpRequest, headers: dict[str, str], exc: Exception, **record: Unpack[_Received]
) -> Answer:
    """The delivery could not even be looked up: recorded as failed, answered 500."""
    delivery = _record(
        request,
        headers,
        verdict=WebhookVerdict.VALID,
        outcome=WebhookOutcome.FAILED,
        **record,
        **_failure(exc),
    )
    logger.exception("fal webhook delivery %s could not be processed", delivery.pk)
    return Answer.error(500, "processing failed, please retry")


class _Received(TypedDict):
    """What every row of one delivery keeps of what came in."""

    body: bytes
    body_size: int
    data: dict[str, Any] | None
    received_at: datetime


class _Failure(TypedDict):
    error: str
    traceback: str


# --- Processing -----------------------------------------------------------------------


class _ProcessedElsewhere(Exception):
    """Another process recorded this delivery's outcome first: ours rolls back."""


def _finished_detail(training: Training) -> str:
    avatar = training.avatar
    if avatar.current_training_id != training.pk:
        return "stale training attempt: the avatar has a newer one"
    return f"already {avatar.status}"


def _enqueue_recheck(training_id: int) -> None:
    """Ask the worker to fetch the result from fal's queue, never in the request.

    Runs after the delivery committed, so it must not raise: a lost hand-over only
    delays the result until the next periodic check (``next_check_at`` is now).
    """
    from django_q.tasks import async_task

    try:
        async_task("monitoring.tasks.recheck", [training_id], source=EventSource.WEBHOOK)
    except Exception:
        logger.exception(
            "Could not queue a re-check of training %s; the next periodic check fetches it",
            training_id,
        )


def _defer_to_queue_check(training: Training, note: str) -> tuple[str, str]:
    """Leave the result to the worker, which fetches it from fal's queue."""
    moved = Training.objects.filter(pk=training.pk, finished_at__isnull=True).update(
        next_check_at=timezone.now()
    )
    if not moved:
        return WebhookOutcome.ALREADY_DONE, "training already finished"
    transaction.on_commit(lambda: _enqueue_recheck(training.pk))
    return WebhookOutcome.DEFERRED, note[:2000]


def _apply(training: Training, data: dict[str, Any], *, source: str, actor: Any) -> tuple[str, str]:
    """Apply a verified delivery to its training: (outcome, note)."""
    answer = _apply_outcome(training, data, source=source, actor=actor)
    # After the transition, never before: a transition locks the avatar row and then
    # the training's, and the periodic check does the same. Writing the training first
    # would take the two locks in the other order and deadlock with a racing check.
    _keep_gateway_request_id(training, data.get("gateway_request_id"))
    return answer


def _apply_outcome(
    training: Training, data: dict[str, Any], *, source: str, actor: Any
) -> tuple[str, str]:
    payload = data.get("payload")
    if data["status"] == "ERROR":
        error_message = data.get("error")
        if not isinstance(error_message, str) or not error_message:
            error_message = "fal reported an error without a message"
        reasons = payloads.detail_messages(payload)
        if reasons:
            # "Invalid status code: 422" alone tells staff nothing; the validation
            # messages in the payload say what was wrong with the input.
            error_message = f"{error_message}: {reasons}"
        error_type = data.get("error_type") or (
            payload.get("error_type") if isinstance(payload, dict) else ""
        )
        # Cancelled when a cancel was requested; the owner's message from fal's codes.
        outcome = transitions.finish_failed(
            training,
            error_message=error_message,
            error_type=str(error_type or "")[:128],
            detail_type_list=owner_messages.detail_types(payload),
            details=payload if isinstance(payload, dict) else {"payload": payload},
            result=payload,
            source=source,
            actor=actor,
        )
        if outcome.changed:
            return WebhookOutcome.APPLIED, ""
        return WebhookOutcome.ALREADY_DONE, outcome.detail
    urls = payloads.lora_urls(payload)
    if urls is None:
        # fal could not serialise the output (payload null + payload_error), or it has
        # no LoRA: the worker fetches the result from the queue and decides.
        note = str(data.get("payload_error") or "payload has no diffusers_lora_file.url")
        return _defer_to_queue_check(training, note)
    lora_url, config_url = urls
    finished = results.complete_with_urls(
        training,
        lora_url=lora_url,
        config_url=config_url,
        result=payload,
        source=source,
        actor=actor,
    )
    if not finished.changed:
        detail = finished.outcome.detail if finished.outcome else finished.summary
        return WebhookOutcome.ALREADY_DONE, detail
    if finished.verdict != payloads.MediaUrl.ALLOWED:
        return WebhookOutcome.APPLIED, finished.summary
    return WebhookOutcome.APPLIED, ""


def _process(
    delivery: WebhookDelivery,
    data: dict[str, Any] | None,
    training: Training | None,
    *,
    source: str,
    actor: Any,
) -> tuple[str, str]:
    """Apply a delivery that is ``received`` and record its outcome, in one transaction.

    The outcome is written with a conditional UPDATE on ``received``: when two
    processes apply the same delivery (a slow request and the worker's pick-up of
    stranded rows), the transitions let only one win, and the one whose UPDATE finds
    the row already processed rolls back. When processing raises, what it did rolls
    back and the row is marked ``failed`` with the traceback; the row itself stays.
    """
    rows = WebhookDelivery.objects.filter(pk=delivery.pk, outcome=WebhookOutcome.RECEIVED)
    try:
        with transaction.atomic():
            excerpt = data is None and body_is_excerpt(delivery)
            if excerpt:
                data = {"request_id": delivery.request_id or delivery.header_request_id}
            elif data is None:
                data = parse(delivery.body.encode("utf-8"), delivery.header_request_id)
            if training is None:
                training = _matching_training(data["request_id"])
            outcome: str
            note: str
            if training is None:
                outcome, note = WebhookOutcome.UNMATCHED, ""
            elif excerpt:
                # Too large to have been kept whole: fal's queue has the result.
                outcome, note = _defer_to_queue_check(
                    training, "body was too large to keep; the result is fetched from fal's queue"
                )
            else:
                outcome, note = _apply(training, data, source=source, actor=actor)
            claimed = rows.update(
                outcome=outcome,
                error=note,
                traceback="",
                training=training,
                processed_at=timezone.now(),
            )
            if not claimed:
                raise _ProcessedElsewhere
            totals.add("webhook_deliveries", {"verdict": delivery.verdict, "outcome": outcome})
    except _ProcessedElsewhere:
        current = WebhookDelivery.objects.filter(pk=delivery.pk).values_list("outcome", flat=True)
        return current.first() or WebhookOutcome.ALREADY_DONE, "processed by another process"
    except Exception as exc:
        logger.exception("fal webhook delivery %s could not be processed", delivery.pk)
        failure = _failure(exc)
        if rows.update(
            outcome=WebhookOutcome.FAILED,
            error=_clean(failure["error"], 2000),
            traceback=_clean(failure["traceback"], 20000),
            processed_at=timezone.now(),
        ):
            totals.add(
                "webhook_deliveries",
                {"verdict": delivery.verdict, "outcome": WebhookOutcome.FAILED},
            )
        return WebhookOutcome.FAILED, failure["error"]
    if outcome == WebhookOutcome.UNMATCHED:
        _look_again_after_commit(data["request_id"])
    return outcome, note


def _keep_gateway_request_id(training: Training, gateway_request_id: Any) -> None:
    """fal's last runner attempt, for support (a query only when it changed)."""
    if not isinstance(gateway_request_id, str) or not gateway_request_id:
        return
    if gateway_request_id[:128] == training.gateway_request_id:
        return
    Training.objects.filter(pk=training.pk).update(gateway_request_id=gateway_request_id[:128])
    training.gateway_request_id = gateway_request_id[:128]


def _accepted_with(signature: str) -> QuerySet[WebhookDelivery]:
    """Deliveries with this signature that were acted on: a match means a replay."""
    return WebhookDelivery.objects.filter(
        signature=signature, verdict=WebhookVerdict.VALID, outcome__in=ACCEPTED_OUTCOMES
    )


def _matching_training(request_id: str) -> Training | None:
    """The attempt a delivery is for, with its avatar and owner (staff re-processing)."""
    return (
        Training.objects.select_related("avatar__owner").filter(fal_request_id=request_id).first()
    )


# What finishing a training reads (transitions, the outbox, the owner's message and
# the API's event callback). A field left out is loaded on first use, one query
# each: correct, only slower, and tests/test_webhooks_statements.py fails on it.
_LOOKUP_FIELDS = (
    "avatar_id",
    "fal_request_id",
    "endpoint",
    "fal_status",
    "finished_at",
    "outcome",
    "owner_message",
    "stuck_since",
    "stuck_reason",
    "error_type",
    "error_message",
    "gateway_request_id",
    "cancel_requested_at",
    "avatar__owner_id",
    "avatar__name",
    "avatar__training_type",
    "avatar__status",
    "avatar__current_training_id",
    "avatar__owner__telegram_id",
    "avatar__owner__language",
)


def _training_and_replay(request_id: str, signature: str) -> tuple[Training | None, bool]:
    """The training a verified delivery is for (with avatar and owner), and whether it
    replays a delivery we acted on: one query when the training exists."""
    try:
        training = (
            Training.objects.select_related("avatar__owner")
            .only(*_LOOKUP_FIELDS)
            .annotate(replays=Exists(_accepted_with(signature)))
            .get(fal_request_id=request_id)
        )
    except Training.DoesNotExist:
        return None, _accepted_with(signature).exists()
    return training, bool(training.replays)


def _failure(exc: BaseException) -> _Failure:
    """What a delivery row keeps of a processing error (staff see it in the admin)."""
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": tb.format_exc()}


def _look_again_after_commit(request_id: str) -> None:
    # The start of a training races its own webhook: if the request id was saved
    # between our lookup and our commit, its training_submitted signal may have
    # fired before our row said "unmatched". Look once more after our commit (the
    # claim in apply_unmatched_deliveries keeps it single).
    transaction.on_commit(lambda: _second_look(request_id))


def process(
    delivery: WebhookDelivery,
    data: dict[str, Any] | None = None,
    *,
    source: str = EventSource.WEBHOOK,
    actor: Any = None,
) -> str:
    """Process a stored, verified delivery that is ``received`` (claimed by the caller):
    staff re-processing, one that came too early, or one a crash left behind."""
    outcome, _note = _process(delivery, data, None, source=source, actor=actor)
    return outcome


def _second_look(request_id: str) -> None:
    training_id = (
        Training.objects.filter(fal_request_id=request_id).values_list("pk", flat=True).first()
    )
    if training_id is not None:
        apply_unmatched_deliveries(training_id=training_id, request_id=request_id)


def why_not_reprocess(delivery: WebhookDelivery) -> str:
    """Why staff may not re-process ``delivery`` ("" when they may).

    The one rule for ``reprocess`` and for the admin's confirmation page, which lists
    each refused delivery with this reason before anything is done.
    """
    # The reasons are shown to staff in the admin, in their language.
    if delivery.verdict != WebhookVerdict.VALID:
        return gettext("only deliveries with a valid signature can be processed")
    if delivery.outcome not in REPROCESSABLE_OUTCOMES:
        return gettext("a delivery that is “%(outcome)s” is not re-processed") % {
            "outcome": delivery.get_outcome_display()
        }
    return ""


def reprocess(delivery: WebhookDelivery, *, actor: Any = None) -> str:
    """Staff: process a verified delivery again (failed, unmatched, deferred, stranded).

    Returns the new outcome, or raises ``ValueError`` saying why it cannot be.
    """
    reason = why_not_reprocess(delivery)
    if reason:
        raise ValueError(reason)
    claimed = WebhookDelivery.objects.filter(pk=delivery.pk, outcome=delivery.outcome).update(
        outcome=WebhookOutcome.RECEIVED
    )
    if not claimed:
        raise ValueError(gettext("the delivery is being processed by someone else"))
    return process(delivery, source=EventSource.STAFF, actor=actor)


def process_stranded(now: datetime | None = None) -> int:
    """Worker task (every minute): process deliveries a crash left ``received``.

    A web worker killed between committing a delivery and processing it leaves the
    row behind; after ``STRANDED_AFTER`` it is no longer in flight anywhere. Returns
    how many were processed (kept as the task's result).
    """
    cutoff = (now or timezone.now()) - STRANDED_AFTER
    stranded = list(
        WebhookDelivery.objects.filter(
            outcome=WebhookOutcome.RECEIVED,
            verdict=WebhookVerdict.VALID,
            received_at__lt=cutoff,
        ).order_by("received_at", "pk")[:STRANDED_BATCH]
    )
    for delivery in stranded:
        outcome = process(delivery)
        logger.warning(
            "fal webhook delivery %s (request %s) was left unprocessed by a crash: now %s",
            delivery.pk,
            delivery.request_id,
            outcome,
        )
    return len(stranded)


def apply_unmatched_deliveries(
    sender: Any = None, *, training_id: int, request_id: str, **kwargs: Any
) -> int:
    """Receiver of ``transitions.training_submitted``: apply a webhook that came too early.

    Runs on commit of the request id, inside whoever started the training: it must
    never raise. Each delivery is claimed with a conditional UPDATE, so a webhook's
    own second look and this receiver never both process it. Returns how many were
    processed. One kept only as an excerpt (too large) gives its training a queue
    check instead.
    """
    processed = 0
    try:
        waiting = WebhookDelivery.objects.filter(
            request_id=request_id, verdict=WebhookVerdict.VALID, outcome=WebhookOutcome.UNMATCHED
        ).order_by("received_at", "pk")
        for delivery in waiting:
            claimed = WebhookDelivery.objects.filter(
                pk=delivery.pk, outcome=WebhookOutcome.UNMATCHED
            ).update(outcome=WebhookOutcome.RECEIVED)
            if not claimed:
                continue
            outcome = process(delivery)
            processed += 1
            logger.info(
                "fal webhook delivery %s for request %s applied late (training %s): %s",
                delivery.pk,
                request_id,
                training_id,
                outcome,
            )
    except Exception:
        logger.exception("early fal webhooks for request %s could not be applied", request_id)
    return processed
