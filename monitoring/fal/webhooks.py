"""fal webhook deliveries: record, verify, then process through the transitions.

The order matters and is the point of this module:

1. **Size first.** ``Content-Length`` is checked before the body is read, and the
   body is read in chunks with a running count (chunked requests have no length).
   We read the raw stream ourselves, so Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``
   never turns a delivery into a 400 of its own.
2. **Verify before trusting anything**: the four ``X-Fal-Webhook-*`` headers, the
   timestamp window, and the Ed25519 signature over the exact raw body (keys from
   ``monitoring.fal.signing_keys``).
3. **Record every delivery**, whatever happens to it. Refused deliveries keep their
   metadata and a small excerpt of the body only, so nobody can fill the disk; an
   exact replay of an accepted delivery (same signature) is recorded and answered
   200 without being processed again. The replay store is this table, shared by all
   workers. A verified delivery's row is written in the transaction that applies
   it, with its outcome, so they commit together (one row, one commit); when
   processing fails, that transaction rolls back and the row is written as failed,
   with the traceback, before we answer 500.
4. **Process idempotently** on the body's ``request_id``: every status change goes
   through ``monitoring.transitions``, whose conditional UPDATEs make a duplicate, or
   a delivery that loses the race with the periodic check, a harmless no-op.

Nothing here calls fal or Telegram: a payload fal could not serialise is left to
the worker (``monitoring.tasks.recheck``), and owner messages leave through the
notification outbox on commit.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import re
import time
import traceback as tb
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connections, router, transaction
from django.db.models import Model
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext

from monitoring import transitions
from monitoring.fal import failures, payloads, signing_keys
from monitoring.models import (
    Avatar,
    EventSource,
    Owner,
    Training,
    WebhookDelivery,
    WebhookOutcome,
    WebhookVerdict,
)
from monitoring.ops import totals

logger = logging.getLogger("monitoring")

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"
SIGNED_HEADERS = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)

# What we keep of the request headers: fal's own, and what helps staff trace a
# delivery. Never cookies or authorization headers (whitelist, not blacklist).
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
EXCERPT_BYTES = 512
READ_CHUNK_BYTES = 64 * 1024

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")

# A delivery already acted on: the same signature again is a replay. FAILED and
# REJECTED are left out, so fal's retry of a delivery we failed to process is
# processed, not dismissed.
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
    # PostgreSQL text and jsonb cannot hold NUL characters.
    return text.replace("\x00", "\ufffd")[:limit]


def _clean_json(value: Any) -> Any:
    """``value`` with NUL characters replaced, so jsonb accepts it."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_clean_json(item) for item in value]
    if isinstance(value, dict):
        return {_clean_json(k): _clean_json(v) for k, v in value.items()}
    return value


def _kept_headers(request: HttpRequest) -> dict[str, str]:
    """The headers worth keeping, the four signed ones first (and always, when sent)."""
    kept = {name: request.headers[name] for name in SIGNED_HEADERS if name in request.headers}
    for name, value in request.headers.items():
        if len(kept) >= MAX_KEPT_HEADERS:
            break
        title = name.title()
        if (title.startswith("X-Fal-") or title in KEPT_HEADERS) and title not in kept:
            kept[title] = value
    return {_clean(name, 64): _clean(str(value), MAX_HEADER_VALUE) for name, value in kept.items()}


def _remote_addr(request: HttpRequest) -> str | None:
    try:
        return str(ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")))
    except ValueError:
        return None


def _declared_length(request: HttpRequest) -> int | None:
    """The Content-Length, or None when absent or unreadable (then we count while reading)."""
    raw = str(request.META.get("CONTENT_LENGTH") or "").strip()
    if not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)


def _read_body(request: HttpRequest, limit: int) -> tuple[bytes, bool]:
    """The raw body, at most ``limit`` bytes; the flag says it was longer.

    With a Content-Length, Django's own stream is bounded by it. Without one
    (chunked transfer), Django would read nothing, so the server's stream is read
    directly when the server says it ends the input itself (``wsgi.input_terminated``).
    """
    stream: Any = request
    environ = getattr(request, "environ", {})
    if request.META.get("CONTENT_LENGTH") in (None, "") and environ.get("wsgi.input_terminated"):
        stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(READ_CHUNK_BYTES, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    return body[:limit], size > limit


# --- Verification ------------------------------------------------------------------------


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """fal's signed text: four lines, the last the hex SHA-256 of the raw body."""
    lines = [request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]
    return "\n".join(lines).encode("utf-8", errors="replace")


def verify(headers: dict[str, str], body: bytes) -> None:
    """Raise ``Refused`` unless the delivery is signed by fal, now. Nothing else."""
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


def parse(body: bytes, header_request_id: str) -> dict[str, Any]:
    """The verified body as fal's delivery shape, or ``Refused`` (400)."""
    try:
        data = json.loads(body)
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


# --- Receiving --------------------------------------------------------------------------


def _record(
    request: HttpRequest,
    headers: dict[str, str],
    *,
    verdict: str,
    outcome: str,
    body: bytes = b"",
    body_size: int = 0,
    whole_body: bool = False,
    error: str = "",
    traceback: str = "",
    data: dict[str, Any] | None = None,
    training_id: int | None = None,
    received_at: datetime | None = None,
) -> WebhookDelivery:
    kept = body if whole_body else body[:EXCERPT_BYTES]
    data = data or {}
    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        received_at=received_at or now,
        remote_addr=_remote_addr(request),
        headers=headers,
        header_request_id=_clean(headers.get(REQUEST_ID_HEADER, ""), 128),
        request_id=_clean(str(data.get("request_id", "")), 128),
        signature=_clean(headers.get(SIGNATURE_HEADER, ""), 256),
        verdict=verdict,
        outcome=outcome,
        fal_status=_clean(str(data.get("status", "")), 16),
        body=_clean(kept.decode("utf-8", errors="replace"), len(kept) + 1),
        body_size=body_size,
        error=_clean(error, 2000),
        traceback=_clean(traceback, 20000),
        processed_at=now if outcome != WebhookOutcome.RECEIVED else None,
        training_id=training_id,
    )
    totals.add("webhook_deliveries", {"verdict": verdict, "outcome": outcome})
    return delivery


def receive(request: HttpRequest) -> Answer:
    """Handle one POST to /webhooks/fal/: every path records a delivery row."""
    received_at = timezone.now()
    headers = _kept_headers(request)
    limit = settings.WEBHOOK_MAX_BODY_BYTES
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        reason = f"body of {declared} bytes is larger than the {limit} bytes allowed"
        _record(
            request,
            headers,
            verdict=WebhookVerdict.TOO_LARGE,
            outcome=WebhookOutcome.REJECTED,
            body_size=min(declared, 2**31 - 1),
            error=reason,
            received_at=received_at,
        )
        return Answer.error(413, reason)
    body, too_large = _read_body(request, limit)
    if too_large:
        reason = f"body is larger than the {limit} bytes allowed"
        _record(
            request,
            headers,
            verdict=WebhookVerdict.TOO_LARGE,
            outcome=WebhookOutcome.REJECTED,
            body=body,
            body_size=limit + 1,
            error=reason,
            received_at=received_at,
        )
        return Answer.error(413, reason)

    try:
        verify(headers, body)
    except Refused as refused:
        _record(
            request,
            headers,
            verdict=refused.verdict,
            outcome=WebhookOutcome.REJECTED,
            body=body,
            body_size=len(body),
            error=refused.reason,
            received_at=received_at,
        )
        if refused.verdict == WebhookVerdict.UNVERIFIABLE:
            logger.error("fal webhook not verifiable: %s", refused.reason)
        return Answer.error(refused.status, refused.reason)

    # Verified: from here the body is fal's, and is kept whole.
    try:
        data = parse(body, headers[REQUEST_ID_HEADER])
    except Refused as refused:
        _record(
            request,
            headers,
            verdict=WebhookVerdict.VALID,
            outcome=WebhookOutcome.REJECTED,
            body=body,
            body_size=len(body),
            whole_body=True,
            error=refused.reason,
            received_at=received_at,
        )
        return Answer.error(refused.status, refused.reason)

    # The transition and the delivery row, with its final outcome, commit together:
    # one transaction and one row written per delivery. If anything raises, what it
    # did rolls back and the row is written as failed, with its traceback, so staff
    # can re-process it and fal retries. If the process dies before the commit,
    # nothing was answered either, and fal delivers again.
    try:
        # The same signature means the same body (it is signed): an exact replay of a
        # delivery we already acted on is recorded, and not processed again. Both
        # questions, which training and whether this is a replay, take one query.
        training, original_pk = _training_and_replay(data["request_id"], headers[SIGNATURE_HEADER])
        if original_pk is not None:
            _record(
                request,
                headers,
                verdict=WebhookVerdict.VALID,
                outcome=WebhookOutcome.REPLAY,
                body=body,
                body_size=len(body),
                error=f"replay of delivery {original_pk}",
                data=data,
                training_id=training.pk if training else None,
                received_at=received_at,
            )
            return Answer(200, {"outcome": WebhookOutcome.REPLAY})
        # An unknown request id changes nothing, and neither does anything for an
        # attempt that has finished (it never changes again): those rows need no
        # transaction of their own, which saves a duplicate two round trips.
        may_change = training is not None and training.finished_at is None
        with transaction.atomic() if may_change else contextlib.nullcontext():
            if training is None:
                outcome, note = WebhookOutcome.UNMATCHED, ""
            else:
                outcome, note = _apply(training, data, source=EventSource.WEBHOOK, actor=None)
            _record(
                request,
                headers,
                verdict=WebhookVerdict.VALID,
                outcome=outcome,
                body=body,
                body_size=len(body),
                whole_body=True,
                error=note,
                data=data,
                training_id=training.pk if training else None,
                received_at=received_at,
            )
    except Exception as exc:
        delivery = _record(
            request,
            headers,
            verdict=WebhookVerdict.VALID,
            outcome=WebhookOutcome.FAILED,
            body=body,
            body_size=len(body),
            whole_body=True,
            data=data,
            received_at=received_at,
            **_failure(exc),
        )
        logger.exception("fal webhook delivery %s could not be processed", delivery.pk)
        # Our own failure: 5xx so that fal delivers again.
        return Answer.error(500, "processing failed, please retry")
    if outcome == WebhookOutcome.UNMATCHED:
        _look_again_after_commit(data["request_id"])
    return Answer(200, {"outcome": outcome})


# --- Processing -----------------------------------------------------------------------


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


def _apply(training: Training, data: dict[str, Any], *, source: str, actor: Any) -> tuple[str, str]:
    """Apply a verified delivery to its training: (outcome, note)."""
    _keep_gateway_request_id(training, data.get("gateway_request_id"))
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
        result = transitions.finish_failed(
            training,
            error_message=error_message,
            error_type=str(error_type or "")[:128],
            detail_type_list=failures.detail_types(payload),
            details=payload if isinstance(payload, dict) else {"payload": payload},
            result=payload,
            source=source,
            actor=actor,
        )
    else:
        urls = payloads.lora_urls(payload)
        if urls is None:
            # fal could not serialise the output (payload null + payload_error), or it has
            # no LoRA: the worker fetches the result from the queue and decides.
            note = str(data.get("payload_error") or "payload has no diffusers_lora_file.url")
            moved = Training.objects.filter(pk=training.pk, finished_at__isnull=True).update(
                next_check_at=timezone.now()
            )
            if not moved:
                return WebhookOutcome.ALREADY_DONE, "training already finished"
            transaction.on_commit(lambda: _enqueue_recheck(training.pk))
            return WebhookOutcome.DEFERRED, note[:2000]
        lora_url, config_url = urls
        result = transitions.complete(
            training,
            lora_url=lora_url,
            config_url=config_url,
            result=payload,
            source=source,
            actor=actor,
        )
    if result.changed:
        return WebhookOutcome.APPLIED, ""
    return WebhookOutcome.ALREADY_DONE, result.detail


def _keep_gateway_request_id(training: Training, gateway_request_id: Any) -> None:
    """fal's last runner attempt, for support (a query only when it changed)."""
    if not isinstance(gateway_request_id, str) or not gateway_request_id:
        return
    if gateway_request_id[:128] == training.gateway_request_id:
        return
    Training.objects.filter(pk=training.pk).update(gateway_request_id=gateway_request_id[:128])
    training.gateway_request_id = gateway_request_id[:128]


def _accepted_with(signature: str):
    """Deliveries with this signature that were acted on: a match means a replay."""
    return WebhookDelivery.objects.filter(
        signature=signature, verdict=WebhookVerdict.VALID, outcome__in=ACCEPTED_OUTCOMES
    )


def _matching_training(request_id: str) -> Training | None:
    """The attempt a delivery is for, with its avatar and owner (staff re-processing)."""
    return (
        Training.objects.select_related("avatar__owner").filter(fal_request_id=request_id).first()
    )


# --- The hot path's one read ----------------------------------------------------------

# What finishing a training reads (transitions._finish_won, outbox.queue_outcome and
# the owner's message), by attribute name; anything else would be loaded on first
# use, one query each.
_LOOKUP_FIELDS: dict[type[Model], set[str]] = {
    Training: {
        "id",
        "avatar_id",
        "fal_request_id",
        "endpoint",
        "fal_status",
        "finished_at",
        "outcome",
        "stuck_since",
        "stuck_reason",
        "error_type",
        "error_message",
        "gateway_request_id",
    },
    Avatar: {"id", "owner_id", "name", "training_type", "status", "current_training_id"},
    Owner: {"id", "telegram_id", "language"},
}


@functools.cache
def _lookup_columns(model: type[Model]) -> list[tuple[str, str]]:
    """(attribute, column) of what is read of ``model``, in the model's field order,
    which is the order ``Model.from_db`` takes values in."""
    wanted = _LOOKUP_FIELDS[model]
    return [(f.attname, f.column) for f in model._meta.concrete_fields if f.attname in wanted]


@functools.cache
def _lookup_sql(alias: str) -> str:
    """One SELECT: the training for a request id, its avatar and owner, and the replay check.

    Written out from the models' metadata instead of built by the ORM for every
    delivery: compiling the equivalent queryset (select_related, only, a Subquery
    annotation) costs about 2 ms of CPU, ten times what running it costs, and this
    read is on every verified delivery (bench/webhooks.py measures the whole path).
    """
    qn = connections[alias].ops.quote_name

    def columns(model: type[Model], table: str) -> list[str]:
        return [f"{table}.{qn(column)}" for _, column in _lookup_columns(model)]

    delivery = WebhookDelivery._meta
    accepted = ", ".join(["%s"] * len(ACCEPTED_OUTCOMES))
    replay = (
        f"(SELECT d.{qn(delivery.pk.column)} FROM {qn(delivery.db_table)} d"
        f" WHERE d.{qn(delivery.get_field('signature').column)} = %s"
        f" AND d.{qn(delivery.get_field('verdict').column)} = %s"
        f" AND d.{qn(delivery.get_field('outcome').column)} IN ({accepted})"
        f" ORDER BY d.{qn(delivery.pk.column)} LIMIT 1)"
    )
    select = [*columns(Training, "t"), *columns(Avatar, "a"), *columns(Owner, "o"), replay]
    t, a, o = Training._meta, Avatar._meta, Owner._meta
    return (
        f"SELECT {', '.join(select)}"
        f" FROM {qn(t.db_table)} t"
        f" JOIN {qn(a.db_table)} a ON a.{qn(a.pk.column)} = t.{qn(t.get_field('avatar').column)}"
        f" JOIN {qn(o.db_table)} o ON o.{qn(o.pk.column)} = a.{qn(a.get_field('owner').column)}"
        f" WHERE t.{qn(t.get_field('fal_request_id').column)} = %s"
    )


def _aware(value: Any) -> Any:
    # SQLite hands back naive UTC datetimes where the ORM would convert them.
    if isinstance(value, datetime) and timezone.is_naive(value):
        return timezone.make_aware(value, UTC)
    return value


def _training_and_replay(request_id: str, signature: str) -> tuple[Training | None, int | None]:
    """The training a verified delivery is for (with avatar and owner), and the accepted
    delivery it replays, if any: both in one query when the training exists."""
    alias = router.db_for_read(Training)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            _lookup_sql(alias),
            [signature, WebhookVerdict.VALID, *ACCEPTED_OUTCOMES, request_id],
        )
        row = cursor.fetchone()
    if row is None:
        return None, _accepted_with(signature).values_list("pk", flat=True).first()
    values = iter(row)
    loaded = {}
    for model in _LOOKUP_FIELDS:
        names = [attname for attname, _ in _lookup_columns(model)]
        loaded[model] = model.from_db(alias, names, [_aware(next(values)) for _ in names])
    training, avatar = loaded[Training], loaded[Avatar]
    avatar.owner = loaded[Owner]
    training.avatar = avatar
    return training, next(values)


def _process_data(
    data: dict[str, Any], *, source: str, actor: Any
) -> tuple[str, str, Training | None]:
    """Apply a verified delivery's body: (outcome, note, training it is for)."""
    training = _matching_training(data["request_id"])
    if training is None:
        return WebhookOutcome.UNMATCHED, "", None
    outcome, note = _apply(training, data, source=source, actor=actor)
    return outcome, note, training


def _failure(exc: BaseException) -> dict[str, str]:
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
    """Apply a stored, verified delivery again (staff, or one that came too early).

    The transition and the delivery's outcome commit together. When processing
    raises, both roll back and the delivery is marked ``failed`` with its
    traceback; the row itself survives.
    """
    try:
        if data is None:
            data = parse(delivery.body.encode("utf-8"), delivery.header_request_id)
        with transaction.atomic():
            outcome, note, training = _process_data(data, source=source, actor=actor)
            WebhookDelivery.objects.filter(pk=delivery.pk).update(
                outcome=outcome,
                error=note,
                traceback="",
                training=training,
                processed_at=timezone.now(),
            )
    except Exception as exc:
        logger.exception("fal webhook delivery %s could not be processed", delivery.pk)
        failure = _failure(exc)
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            outcome=WebhookOutcome.FAILED,
            error=_clean(failure["error"], 2000),
            traceback=_clean(failure["traceback"], 20000),
            processed_at=timezone.now(),
        )
        return WebhookOutcome.FAILED
    if outcome == WebhookOutcome.UNMATCHED:
        _look_again_after_commit(data["request_id"])
    return outcome


def _second_look(request_id: str) -> None:
    training_id = (
        Training.objects.filter(fal_request_id=request_id).values_list("pk", flat=True).first()
    )
    if training_id is not None:
        apply_unmatched_deliveries(training_id=training_id, request_id=request_id)


def reprocess(delivery: WebhookDelivery, *, actor: Any = None) -> str:
    """Staff: process a verified delivery again (failed, unmatched, deferred, stranded).

    Returns the new outcome, or raises ``ValueError`` saying why it cannot be.
    """
    # The reasons are shown to staff in the admin, in their language.
    if delivery.verdict != WebhookVerdict.VALID:
        raise ValueError(gettext("only deliveries with a valid signature can be processed"))
    if delivery.outcome not in REPROCESSABLE_OUTCOMES:
        raise ValueError(
            gettext("a delivery that is “%(outcome)s” is not re-processed")
            % {"outcome": delivery.get_outcome_display()}
        )
    claimed = WebhookDelivery.objects.filter(pk=delivery.pk, outcome=delivery.outcome).update(
        outcome=WebhookOutcome.RECEIVED
    )
    if not claimed:
        raise ValueError(gettext("the delivery is being processed by someone else"))
    return process(delivery, source=EventSource.STAFF, actor=actor)


def apply_unmatched_deliveries(
    sender: Any = None, *, training_id: int, request_id: str, **kwargs: Any
) -> int:
    """Receiver of ``transitions.training_submitted``: apply a webhook that came too early.

    Runs on commit of the request id, inside whoever started the training: it must
    never raise. Each delivery is claimed with a conditional UPDATE, so a webhook's
    own second look and this receiver never both process it. Returns how many were
    processed.
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
