"""The staff dashboard, in the admin's chrome (``admin/monitoring/avatar/dashboard/``);
``monitoring.ops.dashboard`` gathers the figures. It shows owners and fal request ids,
so it needs the avatar view permission (``admin_view`` only checks staff).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from monitoring import roles
from monitoring.admin.avatar_page import live_stuck_words
from monitoring.ops import attention, dashboard


@permission_required(roles.VIEW_AVATAR, raise_exception=True)
def dashboard_view(request: HttpRequest) -> TemplateResponse:
    figures = dashboard.gather()
    for training in figures["stuck"]:
        # Worded now, in the reader's language (the stored reason is the log's English).
        training.live_reason = live_stuck_words(training)
    found = attention.problems(figures["now"])
    verdict = (
        _("All good")
        if not found
        else ngettext("%(n)s problem", "%(n)s problems", len(found)) % {"n": len(found)}
    )
    context = {
        **admin.site.each_context(request),
        # The count in the browser tab too: a glance at the tab says it.
        "title": _("Dashboard: %(verdict)s") % {"verdict": verdict},
        "verdict": verdict,
        "problems": found,
        # What is red on the page is what the headline counts: each card is red only
        # for a problem listed under it.
        "red": {problem.code for problem in found},
        "refresh_seconds": settings.ADMIN_REFRESH_SECONDS,
        **figures,
    }
    return TemplateResponse(request, "admin/monitoring/dashboard.html", context)
