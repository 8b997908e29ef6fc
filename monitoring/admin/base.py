"""What every admin page of the monitor shares: read-only inlines and preformatted blocks."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from django.contrib import admin
from django.db import models
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe


def _pre(value: str) -> SafeString:
    if not value:
        return mark_safe("<span>—</span>")
    return format_html(
        '<pre style="white-space: pre-wrap; overflow-wrap: anywhere; max-height: 30em; '
        'overflow: auto; max-width: 100%">{}</pre>',
        value,
    )


def _json(value: Any) -> SafeString:
    if value is None:
        return _pre("")
    return _pre(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


_Child = TypeVar("_Child", bound=models.Model)
_Parent = TypeVar("_Parent", bound=models.Model)


class ReadOnlyInline(admin.TabularInline[_Child, _Parent]):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
