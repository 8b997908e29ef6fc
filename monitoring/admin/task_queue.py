"""django-q2's models in the admin: read-only, superusers only, nothing unpickled (its own
admin would let a schedule run any function, so database write access would become code
execution). See docs/staff-guide.md#roles.
"""

from __future__ import annotations

from typing import Any

# Imported first so that its registrations exist to be replaced (autodiscovery would
# import it after ours: django_q comes later in INSTALLED_APPS).
import django_q.admin  # noqa: F401
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django_q.models import Failure, OrmQ, Schedule, Success

from avatarsite.admin_base import ReadOnlyAdmin

TASK_FIELDS = ("id", "name", "func", "group", "cluster", "started", "stopped", "success")


# django-q2's models are untyped (and TaskResultAdmin serves both Success and Failure).
class SuperuserReadOnlyAdmin(ReadOnlyAdmin[Any]):
    """Visible to superusers only; nobody adds, changes, deletes or runs anything."""

    actions = None

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)


class TaskResultAdmin(SuperuserReadOnlyAdmin):
    list_display = ("name", "func", "cluster", "started", "stopped", "success")
    list_filter = ("cluster",)
    search_fields = ("name", "func", "group")
    date_hierarchy = "started"
    fields = TASK_FIELDS

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # Arguments and results are pickles: never loaded, so never unpickled.
        return super().get_queryset(request).only(*TASK_FIELDS)


class ScheduleReadOnlyAdmin(SuperuserReadOnlyAdmin):
    list_display = ("name", "func", "schedule_type", "minutes", "cron", "next_run", "cluster")
    list_filter = ("schedule_type", "cluster")
    search_fields = ("name", "func")
    fields = ("name", "func", "schedule_type", "minutes", "cron", "repeats", "next_run", "cluster")


class QueuedTaskAdmin(SuperuserReadOnlyAdmin):
    """The ORM broker's queue: how deep it is and what is locked (the payload stays sealed)."""

    list_display = ("id", "key", "lock")
    list_filter = ("key",)
    fields = ("key", "lock")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).only("id", "key", "lock")


for _model, _admin in (
    (Schedule, ScheduleReadOnlyAdmin),
    (Success, TaskResultAdmin),
    (Failure, TaskResultAdmin),
    (OrmQ, QueuedTaskAdmin),
):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin)
