"""The admin staff run the monitor from: owners, avatars, training attempts, the timeline.

The avatar changelist is the working surface: a coloured status badge with fal's
sub-state, how long the avatar has been in that state, when it was last checked and
why it is stuck, and the actions in ``monitoring.admin.actions``. The page stays a
handful of queries whatever the page size: the current training comes with
``list_select_related`` and "time in state" is a subquery annotation.

Everything the monitor recorded is read-only here: status moves only through
``monitoring.transitions`` (the actions), never through a form field.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.db import models
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from monitoring import transitions
from monitoring.admin import actions
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    FalStatus,
    Owner,
    Training,
    WebhookDelivery,
)
from notifications.models import UnreachableChat

BADGE_COLOURS = {
    AvatarStatus.DRAFT: "#9e9e9e",
    AvatarStatus.READY_FOR_TRAINING: "#1565c0",
    AvatarStatus.TRAINING: "#ef6c00",
    AvatarStatus.COMPLETED: "#2e7d32",
    AvatarStatus.ERROR: "#c62828",
    AvatarStatus.CANCELLED: "#616161",
}
STATE_EVENT_KINDS = (EventKind.CREATED, EventKind.STATUS, EventKind.SUBMITTED, EventKind.FAL_STATUS)
TABLE_LIMIT = 50


def _since(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return timesince(moment, timezone.now(), depth=1)


def _admin_link(obj: Any, text: Any) -> SafeString:
    try:
        url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return format_html("{}", text)
    return format_html('<a href="{}">{}</a>', url, text)


def _pre(value: str) -> SafeString:
    if not value:
        return mark_safe("<span>—</span>")
    return format_html(
        '<pre style="white-space: pre-wrap; max-height: 30em; overflow: auto">{}</pre>', value
    )


def _json(value: Any) -> SafeString:
    if value is None:
        return _pre("")
    return _pre(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


def _table(headers: list[str], rows: list[tuple[Any, ...]], empty: str) -> SafeString:
    if not rows:
        return format_html("<p>{}</p>", empty)
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def status_badge(avatar: Avatar, training: Training | None) -> SafeString:
    """The status as a coloured pill, with fal's sub-state, queue position and stuck flag."""
    label = avatar.get_status_display()
    detail = ""
    if avatar.status == AvatarStatus.TRAINING and training is not None:
        detail = training.get_fal_status_display()
        if training.fal_status == FalStatus.IN_QUEUE and training.queue_position is not None:
            detail = _("%(state)s, #%(position)s") % {
                "state": detail,
                "position": training.queue_position,
            }
        if training.cancel_requested_at:
            detail = _("%(state)s, cancel requested") % {"state": detail}
    stuck = ""
    if training is not None and training.is_stuck:
        stuck = format_html(
            ' <span style="background:#b71c1c;color:#fff;border-radius:3px;padding:1px 5px;'
            'font-size:85%">{}</span>',
            _("stuck"),
        )
    return format_html(
        '<span class="status-badge status-{}" style="background:{};color:#fff;border-radius:10px;'
        'padding:2px 8px;white-space:nowrap">{}{}</span>{}',
        avatar.status,
        BADGE_COLOURS.get(avatar.status, "#9e9e9e"),
        label,
        format_html(" · {}", detail) if detail else "",
        stuck,
    )


# --- Filters -----------------------------------------------------------------------------


class StuckFilter(admin.SimpleListFilter):
    title = gettext_lazy("stuck")
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", _("Stuck")), ("no", _("Not stuck"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Avatar]) -> QuerySet[Avatar]:
        stuck = Q(
            current_training__stuck_since__isnull=False,
            current_training__finished_at__isnull=True,
        )
        if self.value() == "yes":
            return queryset.filter(stuck)
        if self.value() == "no":
            return queryset.exclude(stuck)
        return queryset


class NotificationStateFilter(admin.SimpleListFilter):
    """The state of the owner's message about the current attempt."""

    title = gettext_lazy("owner notification")
    parameter_name = "notification"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            ("pending", _("Waiting to be sent")),
            ("sent", _("Sent")),
            ("problem", _("Failed, given up or unreachable")),
            ("none", _("None yet")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Avatar]) -> QuerySet[Avatar]:
        from notifications.models import Audience, Notification

        statuses = {
            "pending": ("pending", "sending"),
            "sent": ("sent",),
            "problem": ("failed", "given_up", "unreachable"),
        }
        owner_messages = Notification.objects.filter(
            audience=Audience.OWNER, training_id=OuterRef("current_training_id")
        )
        value = self.value()
        if value in statuses:
            return queryset.filter(Exists(owner_messages.filter(status__in=statuses[value])))
        if value == "none":
            return queryset.filter(~Exists(owner_messages))
        return queryset


# --- Inlines -----------------------------------------------------------------------------


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TrainingInline(ReadOnlyInline):
    model = Training
    fk_name = "avatar"
    verbose_name_plural = gettext_lazy("training attempts")
    fields = (
        "attempt",
        "fal_request_id",
        "fal_status",
        "queue_position",
        "created_at",
        "submitted_at",
        "finished_at",
        "outcome",
        "error_message",
        "last_checked_at",
        "stuck_now",
    )
    readonly_fields = fields
    ordering = ("-attempt",)

    @admin.display(description=gettext_lazy("stuck reason"))
    def stuck_now(self, training: Training) -> str:
        # A finished attempt keeps its last stuck reason in the column; only an
        # active, flagged one is stuck.
        return training.stuck_reason if training.is_stuck else ""


class AvatarEventInline(ReadOnlyInline):
    """The timeline, newest first: every status move and flag, with who did it."""

    model = AvatarEvent
    verbose_name_plural = gettext_lazy("timeline")
    fields = (
        "created_at",
        "kind",
        "source",
        "actor",
        "old_status",
        "new_status",
        "message",
        "training",
    )
    readonly_fields = fields
    show_change_link = False
    ordering = ("-created_at", "-id")

    def get_queryset(self, request: HttpRequest) -> QuerySet[AvatarEvent]:
        return super().get_queryset(request).select_related("actor", "training")


# --- Owners ------------------------------------------------------------------------------


class ReachableFilter(admin.SimpleListFilter):
    title = gettext_lazy("reachable")
    parameter_name = "reachable"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("1", _("Yes")), ("0", _("No"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Owner]) -> QuerySet[Owner]:
        if self.value() not in ("0", "1"):
            return queryset
        unreachable = Exists(UnreachableChat.objects.filter(chat_id=OuterRef("telegram_id")))
        return (
            queryset.exclude(unreachable) if self.value() == "1" else queryset.filter(unreachable)
        )


@admin.register(Owner)
class OwnerAdmin(admin.ModelAdmin):
    list_display = (
        "telegram_id",
        "username",
        "display_name",
        "language",
        "reachable",
        "unreachable_reason",
        "last_error",
        "avatar_count",
    )
    list_filter = (ReachableFilter, "language")
    search_fields = ("=telegram_id", "username", "display_name")
    readonly_fields = (
        "reachable",
        "unreachable_reason",
        "unreachable_since",
        "created_at",
        "last_error",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Owner]:
        from notifications.models import NotificationAttempt

        last_error = (
            NotificationAttempt.objects.filter(notification__owner=OuterRef("pk"))
            .exclude(error="")
            .order_by("-started_at", "-id")
            .values("error")[:1]
        )
        unreachable = UnreachableChat.objects.filter(chat_id=OuterRef("telegram_id"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                avatar_total=Count("avatars", distinct=True),
                last_error_text=Subquery(last_error),
                unreachable_reason_text=Subquery(unreachable.values("reason")[:1]),
                unreachable_since_at=Subquery(unreachable.values("since")[:1]),
            )
        )

    def get_search_results(self, request, queryset, search_term):
        return super().get_search_results(request, queryset, search_term.strip().lstrip("@"))

    @admin.display(description=gettext_lazy("last delivery error"))
    def last_error(self, owner: Owner) -> str:
        return getattr(owner, "last_error_text", None) or "—"

    @admin.display(description=gettext_lazy("avatars"), ordering="avatar_total")
    def avatar_count(self, owner: Owner) -> int:
        return getattr(owner, "avatar_total", 0)

    # Reachability is the notifications app's (its UnreachableChat), shown here.
    @admin.display(description=gettext_lazy("reachable"), boolean=True)
    def reachable(self, owner: Owner) -> bool:
        return getattr(owner, "unreachable_reason_text", None) is None

    @admin.display(description=gettext_lazy("why unreachable"))
    def unreachable_reason(self, owner: Owner) -> str:
        return getattr(owner, "unreachable_reason_text", None) or ""

    @admin.display(description=gettext_lazy("unreachable since"))
    def unreachable_since(self, owner: Owner) -> datetime | None:
        return getattr(owner, "unreachable_since_at", None)


# --- Avatars -----------------------------------------------------------------------------


@admin.register(Avatar)
class AvatarAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "status_column",
        "owner",
        "training_type",
        "age",
        "time_in_state",
        "last_check",
        "stuck_reason",
    )
    list_display_links = ("id", "name")
    list_filter = (StuckFilter, "status", "training_type", NotificationStateFilter)
    search_fields = ("name", "=trainings__fal_request_id", "=owner__telegram_id", "owner__username")
    list_select_related = ("owner", "current_training")
    list_per_page = 50
    ordering = ("-created_at",)
    actions = actions.AVATAR_ACTIONS
    inlines = (TrainingInline, AvatarEventInline)
    readonly_fields = (
        "status_column",
        "created_at",
        "updated_at",
        "current_training_link",
        "request_id",
        "raw_result",
        "last_logs",
        "webhook_deliveries",
        "notification_attempts",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "owner",
                    "name",
                    "training_type",
                    "trigger_word",
                    "images_url",
                    "training_settings",
                )
            },
        ),
        (
            gettext_lazy("State"),
            {
                "fields": (
                    "status_column",
                    "current_training_link",
                    "request_id",
                    "created_at",
                    "updated_at",
                )
            },
        ),
        (gettext_lazy("fal result and logs"), {"fields": ("raw_result", "last_logs")}),
        (gettext_lazy("Webhook deliveries"), {"fields": ("webhook_deliveries",)}),
        (gettext_lazy("Notification attempts"), {"fields": ("notification_attempts",)}),
    )
    raw_id_fields = ("owner",)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Avatar]:
        state_since = (
            AvatarEvent.objects.filter(avatar=OuterRef("pk"), kind__in=STATE_EVENT_KINDS)
            .order_by("-created_at", "-id")
            .values("created_at")[:1]
        )
        return super().get_queryset(request).annotate(state_since=Subquery(state_since))

    def get_search_results(self, request, queryset, search_term):
        # "@name" is how staff write Telegram usernames.
        return super().get_search_results(request, queryset, search_term.strip().lstrip("@"))

    def get_readonly_fields(
        self, request: HttpRequest, obj: Avatar | None = None
    ) -> tuple[str, ...]:
        # What was trained is history once a training exists.
        if obj is not None and obj.current_training_id:
            return (
                *self.readonly_fields,
                "owner",
                "training_type",
                "trigger_word",
                "images_url",
                "training_settings",
            )
        return self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: Avatar | None = None) -> bool:
        # Deleting an avatar would delete the evidence of a paid training.
        return False

    def save_model(self, request: HttpRequest, obj: Avatar, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # A new avatar gets its status and "created" event from the transitions
        # module, like one created by a command: ready for the start action.
        created = transitions.create_avatar(
            owner=obj.owner,
            name=obj.name,
            training_type=obj.training_type,
            trigger_word=obj.trigger_word,
            images_url=obj.images_url,
            training_settings=obj.training_settings,
            source=EventSource.STAFF,
            actor=request.user,
        )
        obj.pk, obj.status, obj.created_at = created.pk, created.status, created.created_at

    def get_urls(self):
        from monitoring.admin.dashboard import dashboard_view

        custom = [
            path(
                "dashboard/",
                self.admin_site.admin_view(dashboard_view),
                name="monitoring_dashboard",
            ),
        ]
        return custom + super().get_urls()

    # --- columns --------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_column(self, avatar: Avatar) -> SafeString:
        return status_badge(avatar, avatar.current_training)

    @admin.display(description=gettext_lazy("age"), ordering="created_at")
    def age(self, avatar: Avatar) -> str:
        return _since(avatar.created_at)

    @admin.display(description=gettext_lazy("in this state for"), ordering="state_since")
    def time_in_state(self, avatar: Avatar) -> str:
        return _since(getattr(avatar, "state_since", None) or avatar.created_at)

    @admin.display(
        description=gettext_lazy("last check"), ordering="current_training__last_checked_at"
    )
    def last_check(self, avatar: Avatar) -> str:
        training = avatar.current_training
        if training is None or training.last_checked_at is None:
            return "—"
        text = _("%(ago)s ago") % {"ago": _since(training.last_checked_at)}
        if training.last_check_error:
            text += " ⚠ " + training.last_check_error[:80]
        return text

    @admin.display(
        description=gettext_lazy("stuck reason"), ordering="current_training__stuck_since"
    )
    def stuck_reason(self, avatar: Avatar) -> str:
        training = avatar.current_training
        if training is None or not training.is_stuck:
            return ""
        return training.stuck_reason

    # --- detail fields --------------------------------------------------------------------

    @admin.display(description=gettext_lazy("current training"))
    def current_training_link(self, avatar: Avatar) -> SafeString:
        if avatar.current_training is None:
            return mark_safe("—")
        return _admin_link(
            avatar.current_training, _("attempt %(n)s") % {"n": avatar.current_training.attempt}
        )

    @admin.display(description=gettext_lazy("fal request id"))
    def request_id(self, avatar: Avatar) -> str:
        training = avatar.current_training
        return (training.fal_request_id if training else None) or "—"

    @admin.display(description=gettext_lazy("raw fal result"))
    def raw_result(self, avatar: Avatar) -> SafeString:
        training = avatar.current_training
        return _json(training.result if training else None)

    @admin.display(description=gettext_lazy("last logs"))
    def last_logs(self, avatar: Avatar) -> SafeString:
        training = avatar.current_training
        return _pre(training.logs_tail if training else "")

    @admin.display(description=gettext_lazy("webhook deliveries"))
    def webhook_deliveries(self, avatar: Avatar) -> SafeString:
        deliveries = (
            WebhookDelivery.objects.filter(training__avatar=avatar)
            .select_related("training")
            .order_by("-received_at", "-id")[:TABLE_LIMIT]
        )
        return _table(
            [
                _("received"),
                _("attempt"),
                _("request id"),
                _("verdict"),
                _("outcome"),
                _("status in body"),
                _("error"),
            ],
            [
                (
                    _admin_link(d, d.received_at.strftime("%Y-%m-%d %H:%M:%S")),
                    d.training.attempt if d.training else "—",
                    d.request_id,
                    d.get_verdict_display(),
                    d.get_outcome_display(),
                    d.fal_status,
                    d.error[:200],
                )
                for d in deliveries
            ],
            _("No webhook deliveries."),
        )

    @admin.display(description=gettext_lazy("notification attempts"))
    def notification_attempts(self, avatar: Avatar) -> SafeString:
        from notifications.models import Notification, NotificationAttempt

        notifications = list(
            Notification.objects.filter(avatar=avatar).order_by("-created_at", "-id")[:TABLE_LIMIT]
        )
        attempts = (
            NotificationAttempt.objects.filter(notification__avatar=avatar)
            .select_related("notification")
            .order_by("-started_at", "-id")[:TABLE_LIMIT]
        )
        summary = _table(
            [
                _("notification"),
                _("kind"),
                _("audience"),
                _("status"),
                _("failed attempts"),
                _("sent"),
                _("last error"),
            ],
            [
                (
                    _admin_link(n, f"#{n.pk}"),
                    n.get_kind_display(),
                    n.get_audience_display(),
                    n.get_status_display(),
                    n.attempts,
                    n.sent_at.strftime("%Y-%m-%d %H:%M:%S") if n.sent_at else "—",
                    n.last_error[:200],
                )
                for n in notifications
            ],
            _("No notifications."),
        )
        log = _table(
            [
                _("started"),
                _("notification"),
                _("outcome"),
                _("chat id"),
                _("Telegram message id"),
                _("error"),
            ],
            [
                (
                    a.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    f"#{a.notification_id} {a.notification.get_kind_display()}",
                    a.get_outcome_display(),
                    a.chat_id or "—",
                    a.telegram_message_id or "—",
                    a.error[:200],
                )
                for a in attempts
            ],
            _("No attempts yet."),
        )
        return format_html("{}{}", summary, log)


# --- Training attempts -------------------------------------------------------------------


def _training_inlines() -> tuple[type, ...]:
    # Imported here: the webhooks admin builds its inline on ReadOnlyInline above.
    from monitoring.admin.webhooks import WebhookDeliveryInline

    return (WebhookDeliveryInline,)


@admin.register(Training)
class TrainingAdmin(admin.ModelAdmin):
    """One attempt, everything read-only: the request, the result, the monitoring state."""

    list_display = (
        "id",
        "avatar",
        "attempt",
        "fal_request_id",
        "fal_status",
        "queue_position",
        "outcome",
        "created_at",
        "finished_at",
        "last_checked_at",
        "stuck_reason",
    )
    list_filter = ("fal_status", "outcome", ("stuck_since", admin.EmptyFieldListFilter))
    search_fields = ("=fal_request_id", "avatar__name", "=avatar__owner__telegram_id")
    list_select_related = ("avatar",)
    ordering = ("-created_at",)
    inlines = _training_inlines()
    exclude = ("result", "logs_tail")

    def get_readonly_fields(self, request: HttpRequest, obj: Training | None = None) -> list[str]:
        names = [f.name for f in Training._meta.fields if f.name not in self.exclude]
        return [*names, "raw_result", "last_logs", "notification_attempts"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Training | None = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("raw fal result"))
    def raw_result(self, training: Training) -> SafeString:
        return _json(training.result)

    @admin.display(description=gettext_lazy("last logs"))
    def last_logs(self, training: Training) -> SafeString:
        return _pre(training.logs_tail)

    @admin.display(description=gettext_lazy("notification attempts"))
    def notification_attempts(self, training: Training) -> SafeString:
        from notifications.models import NotificationAttempt

        attempts = (
            NotificationAttempt.objects.filter(notification__training=training)
            .select_related("notification")
            .order_by("-started_at", "-id")[:TABLE_LIMIT]
        )
        return _table(
            [_("started"), _("notification"), _("outcome"), _("error")],
            [
                (
                    a.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    a.notification.get_kind_display(),
                    a.get_outcome_display(),
                    a.error[:200],
                )
                for a in attempts
            ],
            _("No attempts yet."),
        )


@admin.register(AvatarEvent)
class AvatarEventAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "avatar",
        "kind",
        "source",
        "actor",
        "old_status",
        "new_status",
        "message",
    )
    list_filter = ("kind", "source")
    list_select_related = ("avatar", "actor")
    search_fields = ("=avatar__id", "avatar__name", "message")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AvatarEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AvatarEvent | None = None) -> bool:
        return False


def stuck_list_url() -> str:
    return reverse("admin:monitoring_avatar_changelist") + "?stuck=yes"
