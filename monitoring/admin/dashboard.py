"""The staff dashboard, served inside the admin (``admin/monitoring/avatar/dashboard/``).

Thin: ``monitoring.ops.dashboard`` gathers the figures; this view only renders them
with the admin's own chrome, so the page has the admin's login, language and
navigation. It shows owners and fal request ids, so it needs the avatar view
permission, like the avatar list it summarises (``admin_view`` only checks staff).
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _

from monitoring import roles
from monitoring.ops import dashboard


@permission_required(roles.VIEW_AVATAR, raise_exception=True)
def dashboard_view(request: HttpRequest) -> TemplateResponse:
    context = {
        **admin.site.each_context(request),
        "title": _("Training monitor dashboard"),
        **dashboard.gather(),
    }
    return TemplateResponse(request, "admin/monitoring/dashboard.html", context)
