"""The admin's Content-Security-Policy (django-csp), on admin pages only: staff see what
outsiders sent us there, and should an escaping bug let markup through, nothing in it runs.
tests/test_admin_csp.py keeps style attributes and inline scripts out of the code.
"""

from __future__ import annotations

from csp.middleware import CSPMiddleware
from django.http import HttpRequest, HttpResponseBase


class AdminCSPMiddleware(CSPMiddleware):
    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if not request.path_info.startswith("/admin/"):
            return response
        return super().process_response(request, response)
