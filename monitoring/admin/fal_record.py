"""fal's record in the admin: the requests fal billed that nobody follows, and the page
"Adopt a fal request" (Operators: ``monitoring.adopt_training``) to follow one."""

from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from avatarsite.admin_base import ReadOnlyAdmin, admin_views
from monitoring import billing, roles
from monitoring.fal import payloads
from monitoring.models import Avatar, EventSource, Language, TrainingType, UnknownFalRequest
from monitoring.trainings import AdoptRefused, adopt_training, endpoint_of


class AdoptForm(forms.Form):
    request_id = forms.CharField(
        label=gettext_lazy("fal request id"),
        max_length=128,
        # A whole request id (a UUID) stays visible: never cut.
        widget=forms.TextInput(attrs={"class": "vTextField adopt-request-id", "size": 48}),
    )
    endpoint = forms.ChoiceField(
        label=gettext_lazy("fal endpoint"),
        required=False,
        choices=[("", gettext_lazy("ask fal (the endpoint that knows the request)"))]
        + [(endpoint, endpoint) for endpoint in payloads.ENDPOINTS.values()],
        help_text=gettext_lazy("Pre-selected when fal can tell from the request id."),
    )
    avatar = forms.IntegerField(
        label=gettext_lazy("existing avatar id"),
        required=False,
        min_value=1,
        help_text=gettext_lazy("Or leave empty and give the owner and a name."),
    )
    owner_telegram_id = forms.IntegerField(
        label=gettext_lazy("owner's Telegram id"), required=False, min_value=1
    )
    name = forms.CharField(label=gettext_lazy("avatar name"), required=False, max_length=128)
    training_type = forms.ChoiceField(
        label=gettext_lazy("training type"),
        required=False,
        choices=[("", gettext_lazy("from the endpoint"))] + list(TrainingType.choices),
    )
    owner_language = forms.ChoiceField(
        label=gettext_lazy("owner's language"),
        required=False,
        choices=[("", "—")] + list(Language.choices),
    )
    notify = forms.BooleanField(
        label=gettext_lazy("tell the owner if it had already ended"),
        required=False,
        help_text=gettext_lazy("The old system may have told them already."),
    )


@permission_required(roles.ADOPT_TRAINING, raise_exception=True)
def adopt_view(request: HttpRequest) -> HttpResponse:
    """One request at a time; the same service as ``manage.py adopt_training``."""
    initial = request.GET.dict()
    if request.method == "GET" and initial.get("request_id") and not initial.get("endpoint"):
        initial["endpoint"] = endpoint_of(initial["request_id"].strip()) or ""
    form = AdoptForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        avatar = Avatar.objects.filter(pk=data["avatar"]).first() if data["avatar"] else None
        try:
            if data["avatar"] and avatar is None:
                raise AdoptRefused(_("no avatar with id %s") % data["avatar"])
            endpoint = data["endpoint"] or endpoint_of(data["request_id"].strip())
            if not endpoint:
                raise AdoptRefused(
                    _(
                        "fal could not tell which trainer request %(id)s belongs to: "
                        "choose the endpoint"
                    )
                    % {"id": data["request_id"]}
                )
            result = adopt_training(
                request_id=data["request_id"],
                endpoint=endpoint,
                avatar=avatar,
                owner_telegram_id=data["owner_telegram_id"],
                name=data["name"],
                training_type=data["training_type"] or None,
                owner_language=data["owner_language"] or None,
                notify=data["notify"],
                source=EventSource.STAFF,
                actor=request.user,
            )
        except AdoptRefused as exc:
            form.add_error(None, str(exc))
        else:
            values = {"request": result.training.fal_request_id, "id": result.avatar.pk}
            if result.adopted:
                messages.success(
                    request, _("fal request %(request)s is now followed as avatar %(id)s.") % values
                )
            else:
                messages.info(
                    request, _("fal request %(request)s was already avatar %(id)s.") % values
                )
            return redirect("admin:monitoring_avatar_change", result.avatar.pk)
    context = {
        **admin.site.each_context(request),
        "title": _("Adopt a fal request"),
        "form": form,
        # Django's own form layout (the change form's fieldsets and rows).
        "adminform": helpers.AdminForm(
            form,  # type: ignore[arg-type]  # a plain Form renders the same way
            [(None, {"fields": list(form.fields)})],
            prepopulated_fields={},
        ),
        "opts": UnknownFalRequest._meta,
    }
    # A POST that gets here was refused: the form says why.
    status = 400 if request.method == "POST" else 200
    return TemplateResponse(request, "admin/monitoring/adopt_training.html", context, status=status)


@admin.register(UnknownFalRequest)
class UnknownFalRequestAdmin(ReadOnlyAdmin[UnknownFalRequest]):
    list_display = (
        "request_id",
        "endpoint_id",
        "ended_at",
        "status_code",
        "cost_column",
        "first_seen_at",
        "last_seen_at",
        "adopt_link",
    )
    list_filter = ("endpoint_id", ("adopted_training", admin.EmptyFieldListFilter))
    search_fields = ("request_id",)
    readonly_fields = [f.name for f in UnknownFalRequest._meta.fields]
    # A list reconcile_fal rebuilds from fal's record: a row deleted by hand (with
    # Django's delete permission) comes back while fal still has the request.
    deletable = True

    def get_urls(self):
        adopt = ("adopt/", adopt_view, "monitoring_adopt_training")
        return admin_views(self, adopt) + super().get_urls()

    @admin.display(description=gettext_lazy("cost"), ordering="cost_nano_usd")
    def cost_column(self, row: UnknownFalRequest) -> str:
        return f"${billing.usd_text(row.cost_nano_usd)}" if row.cost_nano_usd is not None else "—"

    @admin.display(description=gettext_lazy("adopt"))
    def adopt_link(self, row: UnknownFalRequest) -> str:
        query = urlencode({"request_id": row.request_id, "endpoint": row.endpoint_id})
        return render_to_string(
            "admin/monitoring/unknownfalrequest/adopt_link.html", {"row": row, "query": query}
        )
