"""Staff pages for the bot API: clients and their calls (``api.manage_api_clients``), and
event callbacks. A new client's token and callback secret are shown once, on the page
that answers the form."""

from __future__ import annotations

from typing import TypeVar

from django import forms
from django.contrib import admin, messages
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from avatarsite.admin_base import ConditionFilter, ReadOnlyAdmin, ReadOnlyInline, attempt_fields
from monitoring.api import callbacks, tokens
from monitoring.api.models import ApiCall, ApiClient, CallbackAttempt, EventCallback, Scope

MANAGE = "api.manage_api_clients"


class ApiClientForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        label=gettext_lazy("scopes"),
        choices=Scope.choices,
        widget=forms.CheckboxSelectMultiple,
    )

    callback_url = forms.URLField(
        label=gettext_lazy("callback URL"),
        required=False,
        max_length=1024,
        assume_scheme="https",
        help_text=gettext_lazy("https and public; outcomes of this client's avatars go here."),
    )

    class Meta:
        model = ApiClient
        fields = ("name", "scopes", "callback_url", "callback_stuck", "daily_budget_usd")

    def clean_callback_url(self) -> str:
        url = self.cleaned_data.get("callback_url", "").strip()
        if url:
            try:
                callbacks.validate_callback_url(url)
            except callbacks.CallbackRefused as exc:
                raise forms.ValidationError(str(exc)) from None
        return url


_M = TypeVar("_M", bound=Model)


class OperatorsOnly(admin.ModelAdmin[_M]):
    def _may(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_active and request.user.has_perm(MANAGE)

    has_module_permission = has_view_permission = has_add_permission = _may
    has_change_permission = has_delete_permission = _may


@admin.register(ApiClient)
class ApiClientAdmin(OperatorsOnly[ApiClient]):
    form = ApiClientForm
    list_display = (
        "name",
        "scope_list",
        "token_prefix",
        "callback_url",
        "daily_budget_usd",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("name",)
    readonly_fields = ("token_prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    @admin.display(description=gettext_lazy("scopes"))
    def scope_list(self, obj: ApiClient) -> str:
        return ", ".join(obj.scopes or [])

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return self.readonly_fields if obj else ()

    def save_model(self, request: HttpRequest, obj: ApiClient, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        made = tokens.create_client(
            name=obj.name,
            scopes=list(form.cleaned_data["scopes"]),
            callback_url=obj.callback_url,
            callback_stuck=obj.callback_stuck,
            daily_budget_usd=obj.daily_budget_usd,
        )
        obj.pk = made.client.pk
        obj.token_hash, obj.token_prefix = made.client.token_hash, made.client.token_prefix
        # Kept on this request only, for the page that answers the form.
        request._api_client_secrets = made  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiClient, post_url_continue=None):
        made = getattr(request, "_api_client_secrets", None)
        if made is None:
            return super().response_add(request, obj, post_url_continue)
        response = TemplateResponse(
            request,
            "admin/api/apiclient/created.html",
            {
                **self.admin_site.each_context(request),
                "title": _("API client created"),
                "opts": self.model._meta,
                "client": made.client,
                "token": made.token,
                "callback_secret": made.callback_secret,
            },
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description=gettext_lazy("Revoke the selected clients' tokens"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiClient]):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(
            request, _("%(count)d client(s) revoked.") % {"count": count}, messages.SUCCESS
        )


@admin.register(ApiCall)
class ApiCallAdmin(ReadOnlyAdmin[ApiCall], OperatorsOnly[ApiCall]):
    list_display = ("at", "client", "method", "path", "status", "duration_ms")
    list_filter = ("status", "method", "client")
    search_fields = ("path",)
    date_hierarchy = "at"
    # A log of calls, not evidence: Operators may prune it (OperatorsOnly decides).
    deletable = True


class CallbackAttemptInline(ReadOnlyInline[CallbackAttempt, EventCallback]):
    model = CallbackAttempt
    fields = attempt_fields("status_code", "address", "duration_ms", "url")


class FailingFilter(ConditionFilter):
    """The banner's link: what ``callbacks.failing`` counts as failing."""

    title = gettext_lazy("failing")
    parameter_name = "failing"
    yes_label, no_label = gettext_lazy("Failing (retrying, or undelivered in 24 h)"), None

    def condition(self) -> Q:
        return callbacks.failing(timezone.now())


@admin.register(EventCallback)
class EventCallbackAdmin(ReadOnlyAdmin[EventCallback]):
    list_display = (
        "created_at",
        "event_type",
        "client",
        "avatar",
        "status",
        "attempts",
        "next_attempt_at",
        "maybe_duplicate",
        "last_error",
    )
    list_filter = (FailingFilter, "status", "event_type", "client", "maybe_duplicate")
    search_fields = ("webhook_id", "event_key")
    inlines = [CallbackAttemptInline]
    readonly_fields = (
        "event_key",
        "webhook_id",
        "client",
        "avatar",
        "training",
        "event_type",
        "status",
        "attempts",
        "maybe_duplicate",
        "claimed_by",
        "created_at",
        "next_attempt_at",
        "give_up_at",
        "delivered_at",
        "last_error",
        "payload",
    )
    fields = readonly_fields
    actions = ["resend"]

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("monitoring.resend_notification")

    @admin.action(
        description=gettext_lazy("Send the selected events again (same webhook-id)"),
        permissions=["resend"],
    )
    def resend(self, request: HttpRequest, queryset: QuerySet[EventCallback]):
        count = sum(1 for pk in queryset.values_list("pk", flat=True) if callbacks.resend(pk))
        self.message_user(
            request,
            _("%(count)d event(s) queued to be sent again.") % {"count": count},
            messages.SUCCESS,
        )
