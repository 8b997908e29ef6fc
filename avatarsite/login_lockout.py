"""The page a locked-out admin login gets (django-axes' ``AXES_LOCKOUT_CALLABLE``).

HTTP 429 with the admin's own chrome, saying how long the lock lasts and how a
superuser lifts it, instead of axes' bare one-line text.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any
) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        # ADMIN_LOGIN_FAILURE_LIMIT and ADMIN_LOGIN_COOLOFF_MINUTES, as axes holds them.
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "cooloff_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
    }
    response = TemplateResponse(request, "admin/login_locked_out.html", context, status=429)
    # Rendered here: the middleware hands this response straight back.
    return response.render()
