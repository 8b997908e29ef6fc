"""Every error the API answers: ``{"error": code, "detail": ..., "fields"?: {path: message}}``.

Codes and details are English and fixed: the API's output is never translated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

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
