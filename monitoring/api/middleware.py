"""For ``/api/`` only: every answer is JSON (an HTML error Django or django-ninja made is
replaced), every error ``{"error": code, "detail": ..., "fields"?: {path: message}}`` in
fixed English, never translated; every answer carries ``X-Request-ID``; a trailing slash
does not matter; each authenticated call is recorded in ``ApiCall``, in batches: a statement
per call cost a third of ``GET /avatars/{id}``'s throughput (bench/api.py).
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
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import close_old_connections, connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.utils import timezone, translation
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from monitoring.api.models import ApiCall
from monitoring.storable import stored_as_received

logger = logging.getLogger("monitoring")

NOT_JSON_DETAIL = "The request body is not valid JSON."


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.fields = fields
        self.headers = headers or {}


def error_body(code: str, detail: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if fields:
        body["fields"] = fields
    return body


def _dotted(loc: list[Any] | tuple[Any, ...]) -> str:
    """pydantic's location as the client wrote it: ``owner.telegram_id`` from the body's
    root (ninja puts the parameter's name after "body"), ``query.status``, ``header.X``."""
    parts = [str(part) for part in loc]
    if parts[:1] == ["body"]:
        return ".".join(parts[2:] if len(parts) > 2 else parts[1:]) or "body"
    return ".".join(parts)


def _invalid(exc: ValidationError) -> ApiError:
    fields: dict[str, str] = {}
    for error in exc.errors:
        fields.setdefault(_dotted(error.get("loc", ())), str(error.get("msg", "invalid")))
    return ApiError(422, "invalid", "The request has invalid fields.", fields=fields)


def install(api: NinjaAPI) -> None:
    def respond(request: HttpRequest, exc: ApiError) -> HttpResponse:
        response = api.create_response(
            request, error_body(exc.code, exc.detail, exc.fields), status=exc.status
        )
        for name, value in exc.headers.items():
            response[name] = value
        return response

    def unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
        request_id = getattr(request, "request_id", "")
        logger.exception(
            "API error on %s %s (request %s)",
            request.method,
            request.path,
            request_id,
            extra={"api_request_id": request_id},
        )
        return respond(request, ApiError(500, "internal", "Internal error; it was logged."))

    # Answered the same whatever their text. django-ninja raises ``HttpError`` for one thing
    # here: a body it cannot parse (its "Cannot parse request body" says less than ours).
    fixed = {
        AuthenticationError: ApiError(
            401,
            "unauthorized",
            "A valid token is required: Authorization: Bearer <token>.",
            headers={"WWW-Authenticate": "Bearer"},
        ),
        HttpError: ApiError(400, "bad_request", NOT_JSON_DETAIL),
        RequestDataTooBig: ApiError(413, "too_large", "The request body is too large."),
        SuspiciousOperation: ApiError(400, "bad_request", "The request was refused."),
    }
    handlers: dict[type[Exception], Callable[..., HttpResponse]] = {
        ApiError: respond,
        ValidationError: lambda request, exc: respond(request, _invalid(exc)),
        Exception: unexpected,
    }
    for exc_class, error in fixed.items():
        handlers[exc_class] = lambda request, exc, error=error: respond(request, error)
    for exc_class, handler in handlers.items():
        api.add_exception_handler(exc_class, handler)


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
