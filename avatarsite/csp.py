"""The Content-Security-Policy of the admin (django-csp), on admin pages only.

The admin is where staff see what outsiders sent us (webhook bodies, avatar names):
should an escaping bug ever let markup through, the policy stops it from running
scripts, loading anything from elsewhere, or posting forms elsewhere. Django's admin
and our templates use no inline scripts; inline ``style`` attributes are used by
our admin helpers (status badges, the dashboard), so styles allow 'unsafe-inline'.
Other paths (the webhook, /healthz, the API and its docs) set their own headers.
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
