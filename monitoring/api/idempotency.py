"""``Idempotency-Key`` on the POSTs that start trainings (and so may cost money).

The key is committed as in progress before fal is called, so a repeat never submits
again. See docs/api.md#idempotency-and-replays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Status

from monitoring.api.middleware import ApiError
from monitoring.api.models import ApiClient, IdempotencyKey

logger = logging.getLogger("monitoring")

REPLAYED_HEADER = "Idempotent-Replayed"
Answer = tuple[int, dict[str, Any]]
Recover = Callable[[IdempotencyKey], Answer | None]


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_once(
    request: HttpRequest,
    response: HttpResponse,
    key: str,
    perform: Callable[[IdempotencyKey], Answer],
    recover: Recover,
    path: str,
    body: Any = None,
) -> Status:
    """Run ``perform`` (given the key row, to note its avatar on) at most once per (client,
    key) for a POST to ``path``; a repeat gets the first answer, marked replayed.

    An ``ApiError`` from it means nothing was started: the key is forgotten, so the client
    may retry with it. Any other error after an avatar was noted is answered by ``recover``
    from what the database holds: never a second submit.
    """
    client: ApiClient = request.auth  # type: ignore[attr-defined]
    digest = request_hash("POST", path, body)
    if not key or len(key) > 255 or not key.isascii() or not key.isprintable():
        raise ApiError(
            422,
            "invalid",
            "The request has invalid fields.",
            fields={"header.Idempotency-Key": "1 to 255 printable ASCII characters"},
        )
    try:
        with transaction.atomic():
            row = IdempotencyKey.objects.create(
                client=client, key=key, request_hash=digest, state=IdempotencyKey.State.IN_PROGRESS
            )
    except IntegrityError:
        replayed = _replay(client, key, digest, recover)
        response[REPLAYED_HEADER] = "true"
        return Status(*replayed)
    try:
        answer = perform(row)
    except ApiError:
        IdempotencyKey.objects.filter(pk=row.pk).delete()
        raise
    except Exception:
        row.refresh_from_db()
        recovered = recover(row) if row.avatar_id else None
        if recovered is None:
            IdempotencyKey.objects.filter(pk=row.pk).delete()
            raise
        logger.exception("API start under key %s failed after its avatar was made", key)
        answer = recovered
    _done(IdempotencyKey.objects.filter(pk=row.pk), answer)
    return Status(*answer)


def _done(rows: Any, answer: Answer) -> None:
    status, body = answer
    rows.update(
        state=IdempotencyKey.State.DONE,
        status_code=status,
        response=body,
        finished_at=timezone.now(),
    )


def _replay(client: ApiClient, key: str, digest: str, recover: Recover) -> Answer:
    existing = IdempotencyKey.objects.filter(client=client, key=key).first()
    if existing is None:
        # Finished and pruned, or forgotten after an error, in between: rare enough to
        # ask the client to retry rather than risk running twice here.
        raise ApiError(409, "in_progress", "This Idempotency-Key is being used; retry shortly.")
    if existing.request_hash != digest:
        raise ApiError(409, "key_reused", "This Idempotency-Key was used for a different request.")
    if existing.state == IdempotencyKey.State.DONE:
        assert existing.status_code is not None and existing.response is not None
        return existing.status_code, existing.response
    # Longer than any live request can take (the submit is bounded): a row still in
    # progress after this belongs to a process that died on the way.
    stale_after = timedelta(seconds=settings.FAL_SUBMIT_TIMEOUT_SECONDS + 60)
    if existing.created_at >= timezone.now() - stale_after:
        raise ApiError(
            409, "in_progress", "A request with this Idempotency-Key is still in progress."
        )
    # With an avatar noted, whatever happened to the submit is in the database (a lost
    # answer shows as ``unknown``), so that is the answer, kept for good. Without one,
    # nothing reached fal: the key is freed for the client's next retry.
    answer = recover(existing) if existing.avatar_id else None
    left = IdempotencyKey.objects.filter(pk=existing.pk, state=IdempotencyKey.State.IN_PROGRESS)
    if answer is None:
        left.delete()
        raise ApiError(409, "in_progress", "The earlier request with this key died; retry now.")
    _done(left, answer)
    logger.warning("Idempotency-Key %s was left in progress; answered from the database", key)
    return answer
