"""Object ids in admin URLs and action POSTs are checked before any admin view runs.

Our views and an action's ``_selected_action`` values reach the ORM as they came, where
``int("abc")`` is a 500: an id the model's key cannot hold is a 404 (in a POST, a 400).
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import ValidationError
from django.db import models
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils.deprecation import MiddlewareMixin

# PostgreSQL's bigint and SQLite's integer: what any integer key column holds.
_INTEGER_RANGE = range(-(2**63), 2**63)


def is_valid_id(model: type[models.Model], value: str) -> bool:
    """Whether ``value`` can be a primary key of ``model`` (the row may still not exist)."""
    field = model._meta.pk
    assert field is not None
    try:
        key = field.to_python(value)
    except ValidationError:
        return False
    if isinstance(key, int) and key not in _INTEGER_RANGE:
        return False
    return not (isinstance(key, str) and "\x00" in key)


class AdminObjectIdMiddleware(MiddlewareMixin):
    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: dict[str, Any]
    ) -> HttpResponse | None:
        # Django's ModelAdmin views carry their admin (admin_base.admin_views' ones too).
        model_admin = getattr(view, "model_admin", None)
        if model_admin is None:
            return None
        model = model_admin.model
        object_id = kwargs.get("object_id")
        if object_id is not None and not is_valid_id(model, unquote(object_id)):
            raise Http404(f"No {model._meta.verbose_name} with this id.")
        if request.method == "POST" and ACTION_CHECKBOX_NAME in request.POST:
            selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
            if not all(is_valid_id(model, value) for value in selected):
                return HttpResponseBadRequest(b"An id in _selected_action is not valid.")
        return None
