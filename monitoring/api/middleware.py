"""For ``/api/`` only: every answer is JSON (an HTML error Django or django-ninja made is
replaced) and carries ``X-Request-ID``, a trailing slash does not matter, answers are never
translated, and each authenticated call is recorded in ``ApiCall``, written in batches: a
statement per call cost a third of ``GET /avatars/{id}``'s throughput (bench/api.py).
docs/api.md#the-call-log-and-the-rate-limit.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.utils import timezone, translation

from monitoring.api.errors import error_body
from monitoring.api.models import ApiCall
from monitoring.storable import stored_as_received

logger = logging.getLogger("monitoring")

PREFIX = "/api/"
BATCH = 200
REQUEST_ID = "X-Request-ID"
# What a proxy or the bot may send as its own id: kept, so that both logs name one call.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HTML_ERRORS = {
    404: ("not_found", "No such endpoint: {method} {path}. The endpoints are at /api/v1/docs."),
    405: ("method_not_allowed", "{method} is not allowed on {path}; allowed: {allow}."),
}
_lock = threading.Lock()
_pending: list[ApiCall] = []
_wake = threading.Event()
_writer_pid: int | None = None  # the process whose thread writes (a fork starts its own)


def _without_trailing_slash(request: HttpRequest) -> None:
    path = request.path_info
    if len(path) <= len(PREFIX) or not path.endswith("/"):
        return
    try:
        resolve(path)
    except Resolver404:
        stripped = path.rstrip("/")
        try:
            resolve(stripped)
        except Resolver404:
            return
        request.path = request.path[: len(request.path) - len(path)] + stripped
        request.path_info = stripped


def _as_json(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    is_json = response.get("Content-Type", "").startswith("application/json")
    if response.status_code < 400 or is_json:
        return response
    code, template = _HTML_ERRORS.get(
        response.status_code, ("error", "The request failed ({status}).")
    )
    detail = template.format(
        method=request.method,
        path=request.path,
        allow=response.get("Allow", ""),
        status=response.status_code,
    )
    answer = JsonResponse(error_body(code, detail), status=response.status_code)
    for name in ("Allow", "Retry-After", "WWW-Authenticate"):
        if name in response:
            answer[name] = response[name]
    return answer


class ApiCallMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(PREFIX):
            return self.get_response(request)
        started = time.monotonic()
        sent = request.headers.get(REQUEST_ID, "")
        request_id = sent if _SANE_ID.fullmatch(sent) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        _without_trailing_slash(request)
        # Error details are English codes and messages whatever Accept-Language says.
        with translation.override(None):
            response = _as_json(request, self.get_response(request))
        response[REQUEST_ID] = request_id
        client = getattr(request, "api_client", None)  # set once the token is known
        if client is not None:
            record(
                ApiCall(
                    client=client,
                    at=timezone.now(),
                    method=(request.method or "")[:8],
                    # A path may hold a NUL (%00) PostgreSQL refuses; the call is still logged.
                    path=stored_as_received(request.path[:512]),
                    status=response.status_code,
                    duration_ms=round((time.monotonic() - started) * 1000, 2),
                )
            )
        return response


def record(call: ApiCall) -> None:
    """Keep ``call`` for the next batch, or write it now: with ``API_CALL_LOG_FLUSH_SECONDS``
    0, or inside a transaction (in a savepoint that never breaks it)."""
    if connection.in_atomic_block or not settings.API_CALL_LOG_FLUSH_SECONDS:
        try:
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                call.save(force_insert=True)
        except Exception:
            logger.exception("Could not record API call %s %s", call.method, call.path)
        return
    with _lock:
        _pending.append(call)
        waiting = len(_pending)
    _start_writer()
    if waiting >= BATCH:
        _wake.set()


def pending(client_id: int, since: datetime) -> int:
    """How many of ``client_id``'s calls since ``since`` wait in this process."""
    with _lock:
        return sum(1 for c in _pending if c.client_id == client_id and c.at >= since)


def flush() -> int:
    """Write what waits, in one statement; returns how many rows. Never raises: a batch the
    database refuses is tried again twice (a restart, a lost connection), then dropped."""
    with _lock:
        # Taken out before they are written: counted at most once by ``pending``.
        batch = _pending[:]
        _pending.clear()
    if not batch:
        return 0
    try:
        ApiCall.objects.bulk_create(batch)
    except Exception:
        for call in batch:
            call._log_tries = getattr(call, "_log_tries", 0) + 1  # type: ignore[attr-defined]
        again = [c for c in batch if c._log_tries < 3]  # type: ignore[attr-defined]
        logger.exception(
            "Could not write %s API call records (%s kept for another try)", len(batch), len(again)
        )
        with _lock:
            _pending[:0] = again
        return 0
    return len(batch)


def _write_forever() -> None:
    written_at = time.monotonic()
    while True:
        # Short naps: a change of the setting (tests) counts from the next one.
        woken = _wake.wait(0.1)
        if not woken and time.monotonic() - written_at < settings.API_CALL_LOG_FLUSH_SECONDS:
            continue
        _wake.clear()
        written_at = time.monotonic()
        close_old_connections()  # this thread's own connection, checked like a request's
        if not flush():
            connection.close()  # idle: hold no connection while there is nothing to write


def _start_writer() -> None:
    global _writer_pid
    with _lock:
        if _writer_pid == os.getpid():
            return
        _writer_pid = os.getpid()
    threading.Thread(target=_write_forever, name="api-call-log", daemon=True).start()
    atexit.register(flush)
