"""For ``/api/`` only: every answer is JSON (an HTML error Django or django-ninja made is
replaced) and carries ``X-Request-ID``, a trailing slash does not matter, answers are never
translated, and each authenticated call is recorded (``call_log``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.utils import timezone, translation

from monitoring.api import call_log
from monitoring.api.errors import error_body
from monitoring.api.models import ApiCall
from monitoring.storable import stored_as_received

PREFIX = "/api/"
REQUEST_ID = "X-Request-ID"
# What a proxy or the bot may send as its own id: kept, so that both logs name one call.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HTML_ERRORS = {
    404: ("not_found", "No such endpoint: {method} {path}. The endpoints are at /api/v1/docs."),
    405: ("method_not_allowed", "{method} is not allowed on {path}; allowed: {allow}."),
}


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
            call = ApiCall(
                client=client,
                at=timezone.now(),
                method=(request.method or "")[:8],
                # A path may hold a NUL (%00) PostgreSQL refuses; the call is still logged.
                path=stored_as_received(request.path[:512]),
                status=response.status_code,
                duration_ms=round((time.monotonic() - started) * 1000, 2),
            )
            call_log.record(call)
        return response
