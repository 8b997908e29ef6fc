"""Every error the API answers: ``{"error": code, "detail": ..., "fields"?: {path: message}}``.

Codes and details are English and fixed: the API's output is never translated.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

logger = logging.getLogger("monitoring")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


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
    """pydantic's location as the client wrote it: ``owner.telegram_id``, ``query.status``.

    Body errors are named from the body's root (ninja puts the parameter's name after
    "body"); query, path and header errors keep their source as a prefix.
    """
    parts = [str(part) for part in loc]
    if parts and parts[0] == "body":
        parts = parts[2:] if len(parts) > 2 else parts[1:]
        return ".".join(parts) or "body"
    return ".".join(parts)


def install(api: NinjaAPI) -> None:
    def respond(request: HttpRequest, exc: ApiError) -> HttpResponse:
        response = api.create_response(
            request, error_body(exc.code, exc.detail, exc.fields), status=exc.status
        )
        for name, value in exc.headers.items():
            response[name] = value
        return response

    def validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        fields: dict[str, str] = {}
        for error in exc.errors:
            path = _dotted(error.get("loc", ()))
            fields.setdefault(path, str(error.get("msg", "invalid")))
        return respond(
            request, ApiError(422, "invalid", "The request has invalid fields.", fields=fields)
        )

    def authentication(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return respond(
            request,
            ApiError(
                401,
                "unauthorized",
                "A valid token is required: Authorization: Bearer <token>.",
                headers={"WWW-Authenticate": "Bearer"},
            ),
        )

    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        code = _CODES.get(exc.status_code, "error")
        return respond(request, ApiError(exc.status_code, code, str(exc)))

    def not_found(request: HttpRequest, exc: Exception) -> HttpResponse:
        return respond(request, ApiError(404, "not_found", "No such object."))

    def suspicious(request: HttpRequest, exc: SuspiciousOperation) -> HttpResponse:
        if isinstance(exc, RequestDataTooBig):
            return respond(request, ApiError(413, "too_large", "The request body is too large."))
        return respond(request, ApiError(400, "bad_request", "The request was refused."))

    def unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
        logger.exception(
            "API error on %s %s (request %s)",
            request.method,
            request.path,
            getattr(request, "request_id", ""),
            extra={"api_request_id": getattr(request, "request_id", "")},
        )
        return respond(request, ApiError(500, "internal", "Internal error; it was logged."))

    # django-ninja types a handler's argument as "the exception or its class", though it
    # only ever passes the raised instance: a gap in its hints, not in these handlers.
    api.add_exception_handler(ApiError, respond)  # type: ignore[arg-type]
    api.add_exception_handler(ValidationError, validation)  # type: ignore[arg-type]
    api.add_exception_handler(AuthenticationError, authentication)  # type: ignore[arg-type]
    api.add_exception_handler(HttpError, http_error)  # type: ignore[arg-type]
    api.add_exception_handler(Http404, not_found)  # type: ignore[arg-type]
    api.add_exception_handler(SuspiciousOperation, suspicious)  # type: ignore[arg-type]
    api.add_exception_handler(Exception, unexpected)  # type: ignore[arg-type]
