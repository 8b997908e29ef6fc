"""The admin staff run the monitor from: owners, avatars, training attempts, the timeline.

The avatar list stays a handful of queries whatever the page size; status moves only
through ``monitoring.transitions``. See docs/staff-guide.md#the-admin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin import helpers
from django.db import models
from django.db.models import Case, Count, Exists, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.expressions import Combinable
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from avatarsite.admin_base import (
    ConditionFilter,
    ReadOnlyAdmin,
    StaffAdmin,
    admin_views,
    column,
    pre,
    pretty_json,
)
from monitoring import eta, transitions
from monitoring.admin import actions, avatar_page
from monitoring.admin.avatar_page import live_stuck_words, queue_words
from monitoring.admin.dashboard import dashboard_view
from monitoring.admin.webhooks import WebhookDeliveryInline
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    Owner,
    Training,
    TrainingOutcome,
    WebhookDelivery,
)
from monitoring.ops import attention
from monitoring.wording import event_words, retried_words, status_label
from notifications import reachability
from notifications.messages import last_error_words, telegram_reason_words
from notifications.models import Audience, Notification, NotificationAttempt, UnreachableChat

STATE_EVENT_KINDS = (EventKind.CREATED, EventKind.STATUS, EventKind.SUBMITTED, EventKind.FAL_STATUS)
TABLE_LIMIT = 50
# What an avatar is trained on: history once a training exists.
TRAINED = ("training_type", "trigger_word", "images_url", "training_settings")
STATE_FIELDS = ("status_column", "current_training_link", "request_id", "created_at", "updated_at")
# The avatar page's buttons, each posting the admin action of its name.
PAGE_BUTTONS = {
    "recheck_now": gettext_lazy("Re-check now"),
    "extend_deadline": gettext_lazy("Extend the deadline"),
    "cancel_on_fal": gettext_lazy("Cancel on fal…"),
    "mark_failed": gettext_lazy("Mark as failed…"),
    "start_training": gettext_lazy("Start training…"),
    "retrain": gettext_lazy("Retrain…"),
    "release_held": gettext_lazy("Send the held start now…"),
    "resend_notification": gettext_lazy("Resend the owner's message"),
}


class OneAtATime:
    """Owners and avatars are made one at a time, from a person's request: no "Save and
    add another" button (it invites making a second one by accident)."""

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = {"show_save_and_add_another": False, **(extra_context or {})}
        return super().changeform_view(request, object_id, form_url, extra)  # type: ignore[misc]

    def get_search_results(self, request, queryset, search_term):
        # "@name" is how staff write Telegram usernames.
        term = search_term.strip().lstrip("@")
        return super().get_search_results(request, queryset, term)  # type: ignore[misc]


def _since(moment: datetime | None) -> str:
    return "—" if moment is None else timesince(moment, timezone.now(), depth=1)


def _admin_link(obj: Any, text: Any) -> SafeString:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text)


def _stamp(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def _table(
    objects: Iterable[Any], columns: dict[str, Callable[[Any], Any]], empty: str
) -> SafeString:
    """A read-only table: a row per object, a cell per column (its header: its value)."""
    rows = [[cell(obj) for cell in columns.values()] for obj in objects]
    context = {"headers": list(columns), "rows": rows, "empty": empty}
    return render_to_string("admin/includes/table.html", context)


def status_badge(avatar: Avatar, training: Training | None) -> SafeString:
    """The status as a coloured pill, with fal's sub-state, queue position and stuck flag."""
    detail = ""
    if avatar.status == AvatarStatus.TRAINING and training is not None:
        detail = queue_words(training, training.get_fal_status_display())
        ready = eta.words(training, timezone.now())
        if ready:
            detail = _("%(state)s, %(ready)s") % {"state": detail, "ready": ready}
    stuck = ""
    if training is not None and training.is_stuck:
        stuck = format_html(' <span class="stuck-badge">{}</span>', _("stuck"))
    # Colours: monitoring/static/monitoring/admin.css.
    return format_html(
        '<span class="status-badge status-{}">{}{}</span>{}',
        avatar.status,
        avatar.get_status_display(),
        format_html(" · {}", detail) if detail else "",
        stuck,
    )


class StuckFilter(ConditionFilter):
    title = gettext_lazy("stuck")
    parameter_name = "stuck"
    yes_label, no_label = gettext_lazy("Stuck"), gettext_lazy("Not stuck")

    def condition(self) -> Q:
        return attention.stuck_filter()


class NotificationStateFilter(admin.SimpleListFilter):
    """The state of the owner's message about the current attempt."""

    title = gettext_lazy("owner notification")
    parameter_name = "notification"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            ("pending", _("Waiting to be sent")),
            ("sent", _("Sent")),
            ("problem", _("Not delivered (failed, given up or unreachable)")),
            ("none", _("None yet")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Avatar]) -> QuerySet[Avatar]:
        owner_messages = Notification.objects.filter(
            audience=Audience.OWNER, training_id=OuterRef("current_training_id")
        )
        # "problem": the banner's and the dashboard's definition (notifications.reachability).
        undelivered = reachability.undelivered_owner_messages().filter(avatar_id=OuterRef("pk"))
        conditions = {
            "pending": Exists(owner_messages.filter(status__in=("pending", "sending"))),
            "sent": Exists(owner_messages.filter(status="sent")),
            "problem": Exists(undelivered),
            "none": ~Exists(owner_messages),
        }
        value = self.value()
        return queryset.filter(conditions[value]) if value in conditions else queryset


class ReachableFilter(ConditionFilter):
    title = gettext_lazy("reachable")
    parameter_name = "reachable"

    def condition(self) -> Any:
        return ~Exists(UnreachableChat.objects.filter(chat_id=OuterRef("telegram_id")))


@admin.register(Owner)
class OwnerAdmin(OneAtATime, admin.ModelAdmin[Owner]):
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
        last_error = (
            NotificationAttempt.objects.filter(notification__owner=OuterRef("pk"))
            .exclude(error="")
            .order_by("-started_at", "-id")
            .values("error")[:1]
        )
        unreachable = UnreachableChat.objects.filter(chat_id=OuterRef("telegram_id"))
        owners = super().get_queryset(request)
        return owners.annotate(
            avatar_total=Count("avatars", distinct=True),
            last_error_text=Subquery(last_error),
            unreachable_reason_text=Subquery(unreachable.values("reason")[:1]),
            unreachable_since_at=Subquery(unreachable.values("since")[:1]),
        )

    @admin.display(description=gettext_lazy("last delivery error"))
    def last_error(self, owner: Owner) -> str:
        return last_error_words(getattr(owner, "last_error_text", None) or "") or "—"

    @admin.display(description=gettext_lazy("avatars"), ordering="avatar_total")
    def avatar_count(self, owner: Owner) -> int:
        return getattr(owner, "avatar_total", 0)

    # Reachability is the notifications app's (its UnreachableChat), shown here.
    @admin.display(description=gettext_lazy("reachable"), boolean=True)
    def reachable(self, owner: Owner) -> bool:
        return getattr(owner, "unreachable_reason_text", None) is None

    @admin.display(description=gettext_lazy("why unreachable"))
    def unreachable_reason(self, owner: Owner) -> str:
        return telegram_reason_words(getattr(owner, "unreachable_reason_text", None) or "")

    @admin.display(description=gettext_lazy("unreachable since"))
    def unreachable_since(self, owner: Owner) -> datetime | None:
        return getattr(owner, "unreachable_since_at", None)


@admin.register(Avatar)
class AvatarAdmin(OneAtATime, StaffAdmin[Avatar]):
    list_display = ("id", "name_column", "status_column", "owner", "time_in_state", "last_check")
    list_display_links = ("id", "name_column")
    list_filter = (StuckFilter, "status", "training_type", NotificationStateFilter)
    search_fields = ("name", "=trainings__fal_request_id", "=owner__telegram_id", "owner__username")
    list_select_related = ("owner", "current_training")
    list_per_page = 50
    actions = actions.AVATAR_ACTIONS
    readonly_fields = (
        *STATE_FIELDS,
        "webhook_deliveries",
        "notification_attempts",
        "raw_result",
        "last_logs",
    )
    fieldsets = (
        (None, {"fields": ("owner", "name", *TRAINED)}),
        (gettext_lazy("State"), {"fields": STATE_FIELDS}),
        (gettext_lazy("Webhook deliveries"), {"fields": ("webhook_deliveries",)}),
        (gettext_lazy("Notification attempts"), {"fields": ("notification_attempts",)}),
        # The raw record last, folded: the summary and the timeline say what it means.
        (
            gettext_lazy("fal result and logs (raw)"),
            {"fields": ("raw_result", "last_logs"), "classes": ("collapse",)},
        ),
    )
    # Staff know owners by Telegram id or @username (OwnerAdmin.search_fields).
    autocomplete_fields = ("owner",)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Avatar]:
        state_since = (
            AvatarEvent.objects.filter(avatar=OuterRef("pk"), kind__in=STATE_EVENT_KINDS)
            .order_by("-created_at", "-id")
            .values("created_at")[:1]
        )
        # Stuck first, then the rest of what is training, then everything else.
        attention_rank = Case(
            When(attention.stuck_filter(), then=Value(0)),
            When(status=AvatarStatus.TRAINING, then=Value(1)),
            default=Value(2),
            output_field=models.IntegerField(),
        )
        # ModelAdmin.get_queryset, with the annotations before the ordering that uses them.
        queryset = self.model._default_manager.get_queryset().annotate(
            state_since=Subquery(state_since), attention_rank=attention_rank
        )
        return queryset.order_by(*self.get_ordering(request))

    def get_ordering(self, request: HttpRequest) -> list[str | Combinable]:
        if _is_stuck_list(request):
            # Longest stuck first.
            return ["current_training__stuck_since", "pk"]
        match = getattr(request, "resolver_match", None)
        if match is None or match.url_name != "monitoring_avatar_changelist":
            # Other admins' avatar choices, on a queryset without the annotation.
            return ["-created_at"]
        return ["attention_rank", "-created_at"]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        counts = attention.counts()
        extra = {"counts": counts, "is_stuck_list": _is_stuck_list(request)}
        if extra["is_stuck_list"]:
            extra["title"] = _("Stuck trainings (%(n)s)") % {"n": counts["stuck"]}
            extra["refresh_seconds"] = settings.ADMIN_REFRESH_SECONDS
        return super().changelist_view(request, {**extra, **(extra_context or {})})

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ):
        avatar = (
            Avatar.objects.select_related("current_training", "owner").filter(pk=object_id).first()
        )
        extra: dict[str, Any] = {}
        if avatar is not None:
            # The admin actions this user may run (Django's own permission check), split
            # into those whose precondition holds and those it does not, with why.
            allowed = self.get_actions(request)
            buttons = [
                {
                    "name": name,
                    "label": label,
                    "danger": name in actions.DESTRUCTIVE,
                    "why_not": actions.why_not(name, avatar),
                }
                for name, label in PAGE_BUTTONS.items()
                if name in allowed
            ]
            extra = {
                "summary": avatar_page.summary(avatar),
                "timeline": avatar_page.timeline(avatar),
                "attempts": self.attempts(avatar),
                "page_actions": [b for b in buttons if not b["why_not"]],
                "unavailable_actions": [b for b in buttons if b["why_not"]],
                "extend_choices": actions.EXTEND_CHOICES,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "from_page_field": actions.FROM_PAGE,
            }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def get_readonly_fields(
        self, request: HttpRequest, obj: Avatar | None = None
    ) -> tuple[str, ...]:
        if obj is not None and obj.current_training_id:
            return (*self.readonly_fields, "owner", *TRAINED)
        return self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: Avatar | None = None) -> bool:
        # Deleting an avatar would delete the evidence of a paid training.
        return False

    def save_model(self, request: HttpRequest, obj: Avatar, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        else:  # status and "created" event as for one created by a command
            transitions.create_avatar(obj, source=EventSource.STAFF, actor=request.user)

    def get_urls(self):
        download = avatar_page.download_file
        pages = admin_views(
            self,
            ("dashboard/", dashboard_view, "monitoring_dashboard"),
            ("<path:object_id>/files/<str:kind>/", download, "monitoring_avatar_file"),
        )
        return pages + super().get_urls()

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_column(self, avatar: Avatar) -> SafeString:
        # The stuck reason under the badge: one column fewer, so the key ones fit at 1440 px.
        training = avatar.current_training
        reason = live_stuck_words(training) if training is not None and training.is_stuck else ""
        badge = status_badge(avatar, training)
        if not reason:
            return badge
        return format_html('{}<div class="stuck-reason">{}</div>', badge, reason)

    @admin.display(description=gettext_lazy("name"), ordering="name")
    def name_column(self, avatar: Avatar) -> SafeString:
        # Type and age as a quiet second line: fewer columns, so the key ones fit.
        return format_html(
            '<bdi>{}</bdi><div class="quiet">{} · {}</div>',
            avatar.name,
            avatar.get_training_type_display(),
            _("created %(ago)s ago") % {"ago": _since(avatar.created_at)},
        )

    @admin.display(description=gettext_lazy("in this state for"), ordering="state_since")
    def time_in_state(self, avatar: Avatar) -> SafeString:
        # data-label: on a phone the column headers are hidden, each value says its label.
        since = _since(getattr(avatar, "state_since", None) or avatar.created_at)
        return format_html('<span data-label="{}">{}</span>', _("in this state for"), since)

    @admin.display(
        description=gettext_lazy("last check"), ordering="current_training__last_checked_at"
    )
    def last_check(self, avatar: Avatar) -> SafeString:
        training = avatar.current_training
        if training is None or training.last_checked_at is None:
            text = "—"
        else:
            text = _("%(ago)s ago") % {"ago": _since(training.last_checked_at)}
            if training.last_check_error:
                text += " ⚠ " + training.last_check_error[:80]
        return format_html('<span data-label="{}">{}</span>', _("last check"), text)

    @admin.display(description=gettext_lazy("current training"))
    def current_training_link(self, avatar: Avatar) -> SafeString:
        if avatar.current_training is None:
            return mark_safe("—")
        return _admin_link(
            avatar.current_training, _("attempt %(n)s") % {"n": avatar.current_training.attempt}
        )

    # The current attempt's, from the avatar's page.
    request_id = column(
        gettext_lazy("fal request id"),
        lambda avatar: getattr(avatar.current_training, "fal_request_id", None) or "—",
    )
    raw_result = column(
        gettext_lazy("raw fal result"),
        lambda avatar: pretty_json(getattr(avatar.current_training, "result", None)),
    )
    last_logs = column(
        gettext_lazy("last logs"),
        lambda avatar: pre(getattr(avatar.current_training, "logs_tail", "")),
    )

    def attempts(self, avatar: Avatar) -> SafeString:
        """Every training attempt of the avatar, newest first (shown under the timeline)."""
        return _table(
            Training.objects.filter(avatar=avatar).order_by("-attempt")[:TABLE_LIMIT],
            {
                _("attempt"): lambda t: _admin_link(t, f"#{t.attempt}"),
                _("fal request id"): lambda t: t.fal_request_id or "—",
                _("fal status"): lambda t: t.get_fal_status_display(),
                _("submitted"): lambda t: _stamp(t.submitted_at),
                _("finished"): lambda t: _stamp(t.finished_at),
                _("outcome"): lambda t: (
                    retried_words(t.error_type)
                    if t.outcome == TrainingOutcome.RETRIED
                    else t.get_outcome_display() or "—"
                ),
                _("owner told"): lambda t: t.get_owner_message_display() or "—",
                _("cost"): avatar_page.cost_words,
                _("error"): lambda t: avatar_page.fold(t.error_message) if t.error_message else "—",
            },
            _("No training attempts yet."),
        )

    @admin.display(description=gettext_lazy("webhook deliveries"))
    def webhook_deliveries(self, avatar: Avatar) -> SafeString:
        deliveries = (
            WebhookDelivery.objects.filter(training__avatar=avatar)
            .select_related("training")
            .order_by("-received_at", "-id")[:TABLE_LIMIT]
        )
        return _table(
            deliveries,
            {
                _("received"): lambda d: _admin_link(d, _stamp(d.received_at)),
                _("attempt"): lambda d: d.training.attempt if d.training else "—",
                _("request id"): lambda d: d.request_id,
                _("verdict"): lambda d: d.get_verdict_display(),
                _("outcome"): lambda d: d.get_outcome_display(),
                _("status in body"): lambda d: d.fal_status,
                _("error"): lambda d: d.error[:200],
            },
            _("No webhook deliveries."),
        )

    @admin.display(description=gettext_lazy("notification attempts"))
    def notification_attempts(self, avatar: Avatar) -> SafeString:
        summary = _table(
            Notification.objects.filter(avatar=avatar).order_by("-created_at", "-id")[:TABLE_LIMIT],
            {
                _("notification"): lambda n: _admin_link(n, f"#{n.pk}"),
                _("kind"): lambda n: n.get_kind_display(),
                _("audience"): lambda n: n.get_audience_display(),
                _("status"): lambda n: n.get_status_display(),
                _("failed attempts"): lambda n: n.attempts,
                _("sent"): lambda n: _stamp(n.sent_at),
                _("last error"): lambda n: last_error_words(n.last_error)[:200],
            },
            _("No notifications."),
        )
        log = _attempts_table(NotificationAttempt.objects.filter(notification__avatar=avatar))
        return format_html("{}{}", summary, log)


class TrainingStateFilter(ConditionFilter):
    """The dashboard's links: attempts still running, and those fal errors on."""

    title = gettext_lazy("state")
    parameter_name = "active"
    yes_label, no_label = gettext_lazy("Running"), gettext_lazy("Ended")

    def condition(self) -> Q:
        return Q(finished_at__isnull=True)


class CheckFailingFilter(ConditionFilter):
    title = gettext_lazy("fal's status call")
    parameter_name = "check_failing"
    yes_label, no_label = gettext_lazy("Failing (last check errored)"), None

    def condition(self) -> Q:
        return Q(finished_at__isnull=True, check_failures__gt=0)


@admin.register(Training)
class TrainingAdmin(admin.ModelAdmin[Training]):
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
        "cost_column",
        "last_checked_at",
        "stuck_reason_words",
    )
    list_filter = (
        TrainingStateFilter,
        CheckFailingFilter,
        "fal_status",
        "outcome",
        ("stuck_since", admin.EmptyFieldListFilter),
    )
    search_fields = ("=fal_request_id", "avatar__name", "=avatar__owner__telegram_id")
    list_select_related = ("avatar",)
    ordering = ("-created_at",)
    inlines = (WebhookDeliveryInline,)
    # The stored stuck reason is English (for the log and the alert): shown worded instead.
    exclude = ("result", "logs_tail", "stuck_reason")

    def get_readonly_fields(self, request: HttpRequest, obj: Training | None = None) -> list[str]:
        names = [f.name for f in Training._meta.fields if f.name not in self.exclude]
        return [*names, "stuck_reason_words", "raw_result", "last_logs", "notification_attempts"]

    cost_column = column(gettext_lazy("cost"), avatar_page.cost_words, ordering="cost_nano_usd")
    stuck_reason_words = column(
        gettext_lazy("stuck reason"), lambda t: live_stuck_words(t) if t.is_stuck else ""
    )
    raw_result = column(gettext_lazy("raw fal result"), lambda t: pretty_json(t.result))
    last_logs = column(gettext_lazy("last logs"), lambda t: pre(t.logs_tail))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Training | None = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("notification attempts"))
    def notification_attempts(self, training: Training) -> SafeString:
        return _attempts_table(NotificationAttempt.objects.filter(notification__training=training))


def _attempts_table(attempts: QuerySet[NotificationAttempt]) -> SafeString:
    """Telegram's answers, newest first: on the avatar's page and on an attempt's."""
    return _table(
        attempts.select_related("notification").order_by("-started_at", "-id")[:TABLE_LIMIT],
        {
            _("started"): lambda a: _stamp(a.started_at),
            _("notification"): lambda a: (
                f"#{a.notification_id} {a.notification.get_kind_display()}"
            ),
            _("outcome"): lambda a: a.get_outcome_display(),
            _("chat id"): lambda a: a.chat_id or "—",
            _("Telegram message id"): lambda a: a.telegram_message_id or "—",
            _("error"): lambda a: a.error[:200],
        },
        _("No attempts yet."),
    )


@admin.register(AvatarEvent)
class AvatarEventAdmin(ReadOnlyAdmin[AvatarEvent]):
    list_display = (
        "created_at",
        "avatar",
        "kind",
        "source",
        "actor",
        "old_status_words",
        "new_status_words",
        "message_words",
    )
    list_filter = ("kind", "source")
    list_select_related = ("avatar", "actor")
    search_fields = ("=avatar__id", "avatar__name", "message")
    date_hierarchy = "created_at"
    # Statuses and coded messages in the reader's language; ``message`` stays as recorded.
    fields = ("created_at", "avatar", "training", *list_display[2:], "details")

    old_status_words = column(
        gettext_lazy("old status"), lambda e: status_label(e.old_status), ordering="old_status"
    )
    new_status_words = column(
        gettext_lazy("new status"), lambda e: status_label(e.new_status), ordering="new_status"
    )
    message_words = column(gettext_lazy("message"), event_words)


def _is_stuck_list(request: HttpRequest) -> bool:
    return request.GET.get("stuck") == "yes"
