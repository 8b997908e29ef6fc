"""Admin for fal webhook deliveries: a read-only audit trail (what fal, or someone
pretending to be fal, sent us). Staff may only re-process a verified delivery, after the
confirmation page, through ``Delivery.reprocess`` and so through the transitions.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from avatarsite.admin_base import (
    ConditionFilter,
    ReadOnlyAdmin,
    ReadOnlyInline,
    column,
    confirm_rows,
    confirmation_page,
    is_confirmed,
    pre,
    pretty_json,
    staff_action,
)
from avatarsite.log_redaction import redact, redact_value
from monitoring import roles
from monitoring.fal.deliveries import Delivery
from monitoring.models import RefusedWebhookCount, Training, WebhookDelivery, WebhookOutcome


class MatchedFilter(ConditionFilter):
    title = _("matched a training")
    parameter_name = "matched"

    def condition(self) -> Q:
        return Q(training__isnull=False)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin[WebhookDelivery]):
    list_display = (
        "received_at",
        "request_id_display",
        "verdict",
        "outcome",
        "matched",
        "training_link",
        "fal_status",
        "remote_addr",
        "body_size",
    )
    list_filter = ("verdict", "outcome", MatchedFilter, "received_at")
    search_fields = ("=request_id", "=header_request_id", "=remote_addr")
    list_select_related = ("training",)
    date_hierarchy = "received_at"
    fields = (
        "received_at",
        "remote_addr",
        "header_request_id",
        "request_id",
        "verdict",
        "outcome",
        "fal_status",
        "training",
        "processed_at",
        "error_shown",
        "headers_pretty",
        "signature",
        "body_size",
        "body_sha256",
        "body_pretty",
        "traceback_shown",
    )
    actions = ["reprocess"]

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # An avatar's deliveries (not a list filter): a link staff may keep.
        if lookup in ("training__avatar__id__exact", "training__id__exact"):
            return True
        return super().lookup_allowed(lookup, value, request)

    # The row keeps the delivery as received (fal's signed evidence); what the page shows
    # of it is redacted, since fal's text can echo our key.

    headers_pretty = column(_("fal headers"), lambda d: pretty_json(redact_value(d.headers or {})))
    error_shown = column(_("error"), lambda d: redact(d.error))
    traceback_shown = column(_("traceback"), lambda d: pre(redact(d.traceback)))
    request_id_display = column(
        _("request id"), lambda d: d.request_id or d.header_request_id or "—", ordering="request_id"
    )
    matched = column(_("matched"), lambda d: d.matched, boolean=True)

    @admin.display(description=_("body"))
    def body_pretty(self, obj: WebhookDelivery) -> SafeString:
        # Indented JSON when it parses; an excerpt or junk is shown as sent.
        try:
            return pretty_json(redact_value(json.loads(obj.body)))
        except ValueError:
            return pre(redact(obj.body))

    @admin.display(description=_("training"), ordering="training")
    def training_link(self, obj: WebhookDelivery) -> str:
        if obj.training is None:
            return "—"
        url = reverse("admin:monitoring_avatar_change", args=[obj.training.avatar_id])
        return format_html('<a href="{}">{}</a>', url, obj.training)

    # Re-processing reaches what a re-check would (it can complete an avatar and tell its
    # owner); it never starts, cancels or fails anything: the re-check permission.
    @staff_action(permission=roles.RECHECK_AVATAR, description=_("Re-process selected deliveries…"))
    def reprocess(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]):
        deliveries = list(Delivery.objects.filter(pk__in=queryset).order_by("received_at", "pk"))
        if not is_confirmed(request):
            return confirmation_page(
                self,
                request,
                action="reprocess",
                title=gettext("Re-process webhook deliveries"),
                question=gettext(
                    "Process these deliveries again, as if fal had just sent them? One can "
                    "complete an avatar and tell its owner."
                ),
                rows=confirm_rows(
                    deliveries,
                    lambda delivery: delivery.request_id or delivery.header_request_id,
                    Delivery.why_not_reprocess,
                    Delivery.get_outcome_display,
                ),
            )
        for delivery in deliveries:
            label = delivery.request_id or delivery.header_request_id or f"#{delivery.pk}"
            try:
                outcome = delivery.reprocess(actor=request.user)
            except ValueError as exc:
                self.message_user(
                    request,
                    gettext("Delivery %(label)s not re-processed: %(reason)s")
                    % {"label": label, "reason": exc},
                    messages.WARNING,
                )
                continue
            level = messages.ERROR if outcome == WebhookOutcome.FAILED else messages.SUCCESS
            text = gettext("Delivery %(label)s re-processed: %(outcome)s") % {
                "label": label,
                "outcome": WebhookOutcome(outcome).label,
            }
            self.message_user(request, text, level)
            self.log_change(request, delivery, f"reprocess: {text}")
        return None


@admin.register(RefusedWebhookCount)
class RefusedWebhookCountAdmin(ReadOnlyAdmin[RefusedWebhookCount]):
    """Refused deliveries per minute and verdict, including those beyond the rows kept:
    where staff see an attack (a flood of forged deliveries) at a glance."""

    list_display = ("minute", "verdict", "count")
    list_filter = ("verdict", "minute")
    date_hierarchy = "minute"
    fields = ("minute", "verdict", "count")
    # Counts, not evidence (the rows they count are pruned hourly anyway): staff with
    # Django's delete permission may remove them.
    deletable = True


class WebhookDeliveryInline(ReadOnlyInline[WebhookDelivery, Training]):
    """The deliveries of one training attempt, newest first, on the Training admin page."""

    model = WebhookDelivery
    fields = (
        "received_at",
        "verdict",
        "outcome",
        "fal_status",
        "remote_addr",
        "error",
        "details_link",
    )
    max_num = 0

    @admin.display(description=_("details"))
    def details_link(self, obj: WebhookDelivery) -> str:
        url = reverse("admin:monitoring_webhookdelivery_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, gettext("view"))
