"""What the admin pages of both apps share: read-only pages, preformatted blocks, and
the confirmation page an action shows before it changes anything (in the project
package, so that ``monitoring`` and ``notifications`` need not import each other).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy


def pre(value: str) -> SafeString:
    """Logs, bodies and tracebacks: kept as written, wrapped, scrolled when long."""
    if not value:
        return mark_safe("<span>—</span>")
    return format_html('<pre class="block">{}</pre>', value)


def pretty_json(value: Any) -> SafeString:
    return pre(
        "" if value is None else json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    )


def column(description: Any, value: Callable[[Any], Any], **options: Any) -> Any:
    """A list or read-only column showing ``value(row)``; ``options`` as ``admin.display``'s."""
    return admin.display(description=description, **options)(lambda modeladmin, row: value(row))


def staff_action(*, permission: str, description: Any) -> Callable[[Callable[..., Any]], Any]:
    """An admin action that needs ``permission``: a ``StaffAdmin`` offers it only to those
    who have it, and the wrapper asks again where it runs."""

    def wrap(action: Callable[..., Any]) -> Any:
        @functools.wraps(action)
        def run(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]):
            if not request.user.has_perm(permission):
                raise PermissionDenied
            return action(modeladmin, request, queryset)

        run.staff_permissions = (permission,)  # type: ignore[attr-defined]
        return admin.action(description=description)(run)

    return wrap


class ConditionFilter(admin.SimpleListFilter):
    """A list filter on one condition: "yes" keeps the rows that meet it, "no" (offered
    when ``no_label`` is set) the others."""

    yes_label: Any = gettext_lazy("Yes")
    no_label: Any = gettext_lazy("No")

    def condition(self) -> Any:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", self.yes_label)] + ([("no", self.no_label)] if self.no_label else [])

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(self.condition())
        if self.value() == "no" and self.no_label:
            return queryset.exclude(self.condition())
        return queryset


_M = TypeVar("_M", bound=Model)
_Child = TypeVar("_Child", bound=Model)
_Parent = TypeVar("_Parent", bound=Model)


class StaffAdmin(admin.ModelAdmin[_M]):
    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request)  # never None values
        return {
            name: action
            for name, action in actions.items()
            if request.user.has_perms(getattr(action[0], "staff_permissions", ()))
        }


class ReadOnlyAdmin(StaffAdmin[_M]):
    """Records of what happened: never added or changed from the admin (so every one of
    ``fields`` is shown read-only), deleted only when ``deletable`` (then Django's delete
    permission decides). Actions still run."""

    deletable = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.deletable and super().has_delete_permission(request, obj)


class ReadOnlyInline(admin.TabularInline[_Child, _Parent]):
    """Rows shown under their parent, every field read-only, without a page of their own."""

    extra = 0
    can_delete = False
    show_change_link = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields or ()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def attempt_fields(*own: str) -> tuple[str, ...]:
    """An outbox attempt's columns (``OutboxAttempt``) around its kind's ``own``."""
    return ("started_at", "finished_at", "outcome", *own, "error", "worker")


def admin_views(modeladmin: Any, *views: tuple[str, Callable[..., Any], str]) -> list[Any]:
    """URL patterns for a ModelAdmin's own pages, each (route, view, name) behind the
    admin's login and its id check (admin_ids): put before ``super().get_urls()``."""
    patterns = []
    for route, view, name in views:
        wrapped = modeladmin.admin_site.admin_view(view)
        wrapped.model_admin = modeladmin
        patterns.append(path(route, wrapped, name=name))
    return patterns


CONFIRMED_FIELD = "confirmed"


@dataclass(frozen=True)
class ConfirmRow:
    """One selected row on a confirmation page: ``why_not`` is the reason the action would
    not change it ("" when it would); ``state`` is shown beside an affected row."""

    obj: Model
    label: str
    why_not: str = ""
    state: str = ""

    @property
    def url(self) -> str:
        # A proxy's rows are edited in its concrete model's admin.
        meta = (self.obj._meta.concrete_model or type(self.obj))._meta
        return reverse(
            f"admin:{meta.app_label}_{meta.model_name}_change", args=[quote(self.obj.pk)]
        )


def confirm_rows(
    objects: Iterable[Any],
    label: Callable[[Any], Any],
    why_not: Callable[[Any], str],
    state: Callable[[Any], Any],
) -> list[ConfirmRow]:
    """A confirmation page's rows, each worded by the action's own functions."""
    return [ConfirmRow(obj, str(label(obj)), why_not(obj), str(state(obj))) for obj in objects]


def is_confirmed(request: HttpRequest) -> bool:
    """The confirmation page was submitted (its hidden field), not the action menu."""
    return request.POST.get(CONFIRMED_FIELD) == "yes"


def confirmation_page(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    *,
    action: str,
    rows: list[ConfirmRow],
    form: forms.Form | None = None,
    back_url: str = "",
    **page: Any,
) -> TemplateResponse:
    """What will and will not be affected (each with its reason), before anything is typed.
    ``page``: its ``title``, ``question``, and what else its template reads (``destructive``;
    ``carry``: hidden fields the confirmed POST sends again). A model may add to the page
    with ``admin/<app>/<model>/action_confirmation.html``."""
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        **page,
        "rows": rows,
        "affected": [row for row in rows if not row.why_not],
        "unaffected": [row for row in rows if row.why_not],
        "action": action,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "confirmed_field": CONFIRMED_FIELD,
        "form": form,
        "back_url": back_url or reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        "opts": opts,
        "media": modeladmin.media + (form.media if form is not None else forms.Media()),
    }
    return TemplateResponse(
        request,
        [
            f"admin/{opts.app_label}/{opts.model_name}/action_confirmation.html",
            f"admin/{opts.app_label}/action_confirmation.html",
            "admin/action_confirmation.html",
        ],
        context,
    )
