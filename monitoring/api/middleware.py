"""For ``/api/`` only: answers are never translated, and each authenticated call is recorded."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import translation

from monitoring.api.models import ApiCall
from monitoring.storable import stored_as_received

logger = logging.getLogger("monitoring")

PREFIX = "/api/"


class ApiCallMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(PREFIX):
            return self.get_response(request)
        started = time.monotonic()
        # Error details are English codes and messages whatever Accept-Language says.
        with translation.override(None):
            response = self.get_response(request)
        client = getattr(request, "api_client", None)
        if client is not None:
            self._record(request, response, client, (time.monotonic() - started) * 1000)
        return response

    def _record(self, request: HttpRequest, response: HttpResponse, client, duration_ms: float):

        try:
            # A savepoint: a record that fails never breaks a transaction around it.
            with transaction.atomic():
                ApiCall.objects.create(
                    client=client,
                    method=(request.method or "")[:8],
                    # A path may hold a NUL (%00) PostgreSQL refuses; the call is still logged.
                    path=stored_as_received(request.path[:512]),
                    status=response.status_code,
                    duration_ms=round(duration_ms, 2),
                )
        except Exception:
            # The call's answer matters more than its record.
            logger.exception("Could not record API call %s %s", request.method, request.path)
