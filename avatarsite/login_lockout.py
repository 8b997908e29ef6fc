"""Admin login lockouts (django-axes): per (address, username) pair, so a stranger cannot
lock a staff member out, and per address (no axes setting) against password spraying.
See docs/staff-guide.md#admin-login-limit.
"""

from __future__ import annotations

from typing import Any

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_ip_address
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib import admin
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse


def address_locked(request: HttpRequest) -> bool:
    """Failed logins from the request's address within the cool-off, whatever the username."""
    failures = AccessAttempt.objects.filter(
        ip_address=getattr(request, "axes_ip_address", None) or get_client_ip_address(request),
        attempt_time__gte=get_cool_off_threshold(request),
    ).aggregate(total=Sum("failures_since_start"))["total"]
    return (failures or 0) >= settings.ADMIN_LOGIN_ADDRESS_FAILURE_LIMIT


class PairAndAddressHandler(AxesDatabaseHandler):
    """axes compares one count with one limit, when a login fails and before each login is
    tried: raising the count is the one place both see the address limit."""

    def get_failures(self, request: Any, credentials: dict | None = None) -> int:
        pair = super().get_failures(request, credentials)
        if pair < settings.AXES_FAILURE_LIMIT and address_locked(request):
            return settings.AXES_FAILURE_LIMIT
        return pair


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any
) -> HttpResponse:
    by_address = address_locked(request)
    context = {
        **admin.site.each_context(request),
        "by_address": by_address,
        "address": getattr(request, "axes_ip_address", "") or "",
        "failure_limit": (
            settings.ADMIN_LOGIN_ADDRESS_FAILURE_LIMIT
            if by_address
            else settings.AXES_FAILURE_LIMIT
        ),
        "cooloff_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
    }
    # Rendered here: the middleware hands this response straight back.
    return TemplateResponse(request, "admin/login_locked_out.html", context, status=429).render()
