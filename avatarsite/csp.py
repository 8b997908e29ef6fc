"""The admin's Content-Security-Policy (django-csp, settings.CONTENT_SECURITY_POLICY), on
admin pages only.

Staff see what outsiders sent us there (webhook bodies, avatar names): should an
escaping bug let markup through, nothing in it runs, loads from elsewhere, styles the
page or posts elsewhere. Scripts and styles come from our static files only, never
inline: every style is a class in monitoring/static/monitoring/admin.css, and
tests/test_admin_csp.py keeps style attributes and inline scripts out of the code. Other
paths (the webhook, /healthz, the API and its docs) set their own headers.
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
