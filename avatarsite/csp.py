"""The Content-Security-Policy of the admin pages (django-csp).

The admin shows what outsiders sent us (webhook bodies, avatar names): should an
escaping bug let markup through, the policy stops it from running scripts, loading
anything from elsewhere or posting forms elsewhere. Other paths set their own headers.
"""

from __future__ import annotations

from csp.middleware import CSPMiddleware
from django.http import HttpRequest, HttpResponseBase

ADMIN_PREFIX = "/admin/"


class AdminCSPMiddleware(CSPMiddleware):
    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if not request.path_info.startswith(ADMIN_PREFIX):
            return response
        return super().process_response(request, response)
