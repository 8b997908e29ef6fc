"""The avatar admin's actions: thin wrappers around the service functions.

Each action reports, per avatar, what it did (one admin message each), so a staff
member who selected twenty avatars knows which ones moved and why the others did
not. Actions that spend money or end a training (start, retrain, cancel, mark
failed) show a confirmation page first; the same page carries the reason or the
new deadline where one is needed.

Re-checking is never done inside the request: it is queued to the worker, which
bounds every fal call and records the outcome.

Every action needs a permission of ``monitoring.roles`` (``staff_action``): Django
offers it only to staff who hold it, and the action checks again where it runs, so
a crafted POST (with or without ``select_across``) or a confirmation page posted by
someone else is refused and changes nothing. What an action did is written to the
avatar's timeline (by the transitions) and to Django's admin log (``LogEntry``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from monitoring import roles, transitions
from monitoring import trainings as training_service
from monitoring.fal import client as fal
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    FalStatus,
    Training,
)

STAFF = EventSource.STAFF


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label=gettext_lazy("Reason"),
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=gettext_lazy("Stored as the training's error message and shown in the timeline."),
    )


class ExtendForm(forms.Form):
    hours = forms.IntegerField(
        label=gettext_lazy("Hours"),
        min_value=1,
        max_value=24 * 14,
        initial=6,
        help_text=gettext_lazy("The stuck flag is cleared and not raised again before then."),
    )


ActionFunction = Callable[[admin.ModelAdmin, HttpRequest, QuerySet[Any]], Any]


def staff_action(*, permission: str, description: Any) -> Callable[[ActionFunction], Any]:
    """An admin action that needs ``permission`` ("app_label.codename").

    Django offers and dispatches the action only when the ModelAdmin's
    ``has_<codename>_permission`` says yes; the wrapper asks again where the action
    runs, so any path that reaches the function without the menu is refused too.
    """
    codename = permission.split(".", 1)[1]

    def wrap(action: ActionFunction) -> Any:
        @functools.wraps(action)
        def run(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]):
            if not request.user.has_perm(permission):
                raise PermissionDenied
            return action(modeladmin, request, queryset)

        return admin.action(description=description, permissions=[codename])(run)

    return wrap


class AvatarActionPermissions:
    """The ``has_<codename>_permission`` methods Django asks before offering an action."""

    def has_start_training_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.START_TRAINING)

    def has_cancel_training_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.CANCEL_TRAINING)

    def has_fail_avatar_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.FAIL_AVATAR)

    def has_recheck_avatar_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.RECHECK_AVATAR)

    def has_manage_stuck_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.MANAGE_STUCK)

    def has_resend_notification_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.RESEND_NOTIFICATION)


def log_staff_action(
    modeladmin: admin.ModelAdmin, request: HttpRequest, obj: Any, action: str, text: str
) -> None:
    """Django's admin log, besides the timeline: who did what to which row, from the admin."""
    modeladmin.log_change(request, obj, f"{action}: {text}")


def _report(request: HttpRequest, avatar: Avatar, text: str, level: int = messages.INFO) -> None:
    messages.add_message(request, level, f"{avatar.name} (#{avatar.pk}): {text}")


def _active_training(avatar: Avatar) -> Training | None:
    training = avatar.current_training
    if training is None or training.finished_at is not None:
        return None
    return training


def _confirm(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Avatar],
    *,
    action: str,
    title: str,
    question: str,
    form: forms.Form | None = None,
    destructive: bool = True,
) -> TemplateResponse:
    """The intermediate page: lists the avatars, asks, and posts the same action back."""
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "question": question,
        "avatars": list(queryset),
        "action": action,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "form": form,
        "destructive": destructive,
        "opts": modeladmin.model._meta,
        "media": modeladmin.media,
    }
    return TemplateResponse(request, "admin/monitoring/avatar/action_confirmation.html", context)


def _confirmed(request: HttpRequest) -> bool:
    return request.POST.get("confirmed") == "yes"


def _each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Avatar],
    action: str,
    do: Callable[[Avatar], tuple[str, int]],
) -> None:
    for avatar in queryset.select_related("current_training").order_by("pk"):
        text, level = do(avatar)
        _report(request, avatar, text, level)
        if level == messages.SUCCESS:
            log_staff_action(modeladmin, request, avatar, action, text)


def _over_bulk_start_cap(request: HttpRequest, queryset: QuerySet[Avatar]) -> bool:
    """Each submit is a paid training: one click may start at most ADMIN_BULK_START_MAX."""
    selected = queryset.count()
    cap = settings.ADMIN_BULK_START_MAX
    if selected <= cap:
        return False
    messages.error(
        request,
        _(
            "Nothing was started: %(selected)s avatars are selected and one action starts at "
            "most %(cap)s trainings (ADMIN_BULK_START_MAX). Select fewer avatars."
        )
        % {"selected": selected, "cap": cap},
    )
    return True


# --- Re-check ----------------------------------------------------------------------------


@staff_action(
    permission=roles.RECHECK_AVATAR,
    description=gettext_lazy("Re-check now on fal (queued to the worker)"),
)
def recheck_now(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]
) -> None:
    from django_q.tasks import async_task

    trainings: list[Training] = []
    queued: list[tuple[Avatar, str]] = []
    skipped: list[Avatar] = []
    for avatar in queryset.select_related("current_training").order_by("pk"):
        training = _active_training(avatar)
        if training is None:
            skipped.append(avatar)
        else:
            trainings.append(training)
            text = _("re-check queued (training attempt %(attempt)s).") % {
                "attempt": training.attempt
            }
            _report(request, avatar, text, messages.SUCCESS)
            queued.append((avatar, text))
    for avatar in skipped:
        _report(request, avatar, _("not re-checked: no active training."), messages.WARNING)
    ids = [training.pk for training in trainings]
    if ids:
        # One task for the whole selection: the engine checks them concurrently,
        # each call bounded in time, and records what changed. The request is in
        # each timeline (who asked, when) even if the check changes nothing; it is
        # not a status change, so it needs no transition.
        with transaction.atomic():
            AvatarEvent.objects.bulk_create(
                AvatarEvent(
                    avatar_id=training.avatar_id,
                    training_id=training.pk,
                    kind=EventKind.RECHECK_REQUESTED,
                    source=STAFF,
                    actor=request.user,
                )
                for training in trainings
            )
            async_task(
                "monitoring.tasks.recheck",
                ids,
                source=STAFF,
                actor_id=request.user.pk,
                task_name=f"staff re-check of {len(ids)} training(s)",
            )
        for avatar, text in queued:
            log_staff_action(modeladmin, request, avatar, "recheck_now", text)


# --- Start / retrain ---------------------------------------------------------------------


def _start(avatar: Avatar, request: HttpRequest) -> tuple[str, int]:
    outcome = training_service.start_training(avatar, source=STAFF, actor=request.user)
    if outcome.changed:
        training = outcome.training
        request_id = getattr(training, "fal_request_id", None) if training else None
        if request_id:
            return _("training started, fal request %(id)s.") % {"id": request_id}, messages.SUCCESS
        if training is not None and training.submit_unknown_since:
            return f"{outcome.detail}.", messages.WARNING
        return _("training started (%(detail)s).") % {
            "detail": outcome.detail or outcome.status
        }, messages.SUCCESS
    return _("not started: %(detail)s.") % {
        "detail": outcome.detail or outcome.status
    }, messages.WARNING


@staff_action(permission=roles.START_TRAINING, description=gettext_lazy("Start training on fal…"))
def start_training(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]):
    if _over_bulk_start_cap(request, queryset):
        return None
    if not _confirmed(request):
        return _confirm(
            modeladmin,
            request,
            queryset,
            action="start_training",
            title=_("Start training"),
            question=_("Submit these avatars to fal? Each submit starts a paid training."),
            destructive=False,
        )

    def do(avatar: Avatar) -> tuple[str, int]:
        if avatar.status == AvatarStatus.DRAFT:
            outcome = transitions.mark_ready(avatar, source=STAFF, actor=request.user)
            if not outcome.changed:
                return _("not started: %(detail)s.") % {"detail": outcome.detail}, messages.WARNING
        if avatar.status != AvatarStatus.READY_FOR_TRAINING:
            return _("not started: the avatar is %(status)s.") % {
                "status": avatar.get_status_display()
            }, messages.WARNING
        return _start(avatar, request)

    _each(modeladmin, request, queryset, "start_training", do)
    return None


@staff_action(permission=roles.START_TRAINING, description=gettext_lazy("Retrain failed avatars…"))
def retrain(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]):
    if _over_bulk_start_cap(request, queryset):
        return None
    if not _confirmed(request):
        return _confirm(
            modeladmin,
            request,
            queryset,
            action="retrain",
            title=_("Retrain failed avatars"),
            question=_(
                "Start a new training attempt for each failed avatar? Each submit starts a paid "
                "training; the failed attempt keeps its history."
            ),
            destructive=False,
        )

    def do(avatar: Avatar) -> tuple[str, int]:
        if avatar.status != AvatarStatus.ERROR:
            return _("not retrained: only failed avatars can be retrained (it is %(status)s).") % {
                "status": avatar.get_status_display()
            }, messages.WARNING
        outcome = transitions.retrain(avatar, source=STAFF, actor=request.user)
        if not outcome.changed:
            return _("not retrained: %(detail)s.") % {"detail": outcome.detail}, messages.WARNING
        return _start(avatar, request)

    _each(modeladmin, request, queryset, "retrain", do)
    return None


# --- Cancel / mark failed ------------------------------------------------------------------


@staff_action(permission=roles.CANCEL_TRAINING, description=gettext_lazy("Cancel on fal…"))
def cancel_on_fal(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]):
    if not _confirmed(request):
        return _confirm(
            modeladmin,
            request,
            queryset,
            action="cancel_on_fal",
            title=_("Cancel trainings on fal"),
            question=_(
                "Ask fal to cancel these trainings? A running job may still complete; the avatar "
                "turns cancelled once fal confirms."
            ),
        )

    def do(avatar: Avatar) -> tuple[str, int]:
        training = _active_training(avatar)
        if training is None:
            return _("nothing to cancel: no active training."), messages.WARNING
        # cancel_training turns fal's errors into a sentence for staff itself.
        result = training_service.cancel_training(training, source=STAFF, actor=request.user)
        return str(result), messages.SUCCESS

    _each(modeladmin, request, queryset, "cancel_on_fal", do)
    return None


def _cancel_job_after_failing(training: Training) -> str:
    """Stop a job we just marked failed, so fal does not keep training (and billing) it."""
    if not training.fal_request_id or training.fal_status not in (
        FalStatus.IN_QUEUE,
        FalStatus.IN_PROGRESS,
    ):
        return ""
    try:
        answer = fal.cancel(training.endpoint, training.fal_request_id)
    except fal.FalError as exc:  # reported to staff; the avatar has failed already
        return _("fal cancel failed: %(error)s") % {"error": exc}
    return _("fal answered %(answer)s to the cancel") % {"answer": answer}


@staff_action(permission=roles.FAIL_AVATAR, description=gettext_lazy("Mark as failed…"))
def mark_failed(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]):
    form = ReasonForm(request.POST if _confirmed(request) else None)
    if not (_confirmed(request) and form.is_valid()):
        return _confirm(
            modeladmin,
            request,
            queryset,
            action="mark_failed",
            title=_("Mark as failed"),
            question=_(
                "Mark these trainings as failed? The owner is told, and a job still running on "
                "fal is cancelled."
            ),
            form=form,
        )
    reason = form.cleaned_data["reason"]

    def do(avatar: Avatar) -> tuple[str, int]:
        training = _active_training(avatar)
        if training is None:
            return _("not marked failed: no active training."), messages.WARNING
        # Snapshot before failing: the transition clears the sub-state we need.
        snapshot = Training(
            pk=training.pk,
            endpoint=training.endpoint,
            fal_request_id=training.fal_request_id,
            fal_status=training.fal_status,
        )
        outcome = transitions.fail(
            training,
            error_message=reason,
            error_type="staff",
            details={"marked_by": request.user.get_username()},
            source=STAFF,
            actor=request.user,
        )
        if not outcome.changed:
            return _("not marked failed: %(detail)s.") % {
                "detail": outcome.detail
            }, messages.WARNING
        cancel = _cancel_job_after_failing(snapshot)
        text = _("marked failed.")
        return (f"{text} {cancel}." if cancel else text), messages.SUCCESS

    _each(modeladmin, request, queryset, "mark_failed", do)
    return None


# --- Stuck -------------------------------------------------------------------------------


@staff_action(permission=roles.MANAGE_STUCK, description=gettext_lazy("Clear the stuck flag"))
def clear_stuck(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]
) -> None:
    def do(avatar: Avatar) -> tuple[str, int]:
        training = _active_training(avatar)
        if training is None or training.stuck_since is None:
            return _("not stuck."), messages.WARNING
        if transitions.clear_stuck(training, source=STAFF, actor=request.user):
            return _("stuck flag cleared."), messages.SUCCESS
        return _("not stuck any more."), messages.WARNING

    _each(modeladmin, request, queryset, "clear_stuck", do)


@staff_action(permission=roles.MANAGE_STUCK, description=gettext_lazy("Extend the stuck deadline…"))
def extend_deadline(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]):
    form = ExtendForm(request.POST if _confirmed(request) else None)
    if not (_confirmed(request) and form.is_valid()):
        return _confirm(
            modeladmin,
            request,
            queryset,
            action="extend_deadline",
            title=_("Extend the stuck deadline"),
            question=_("Clear the stuck flag and give these trainings more time?"),
            form=form,
            destructive=False,
        )
    until = timezone.now() + timedelta(hours=form.cleaned_data["hours"])

    def do(avatar: Avatar) -> tuple[str, int]:
        training = _active_training(avatar)
        if training is None or training.stuck_since is None:
            return _("not stuck: deadline unchanged."), messages.WARNING
        if transitions.clear_stuck(training, source=STAFF, actor=request.user, extend_until=until):
            return _("stuck flag cleared; not flagged again before %(until)s.") % {
                "until": until.strftime("%Y-%m-%d %H:%M UTC")
            }, messages.SUCCESS
        return _("not stuck any more."), messages.WARNING

    _each(modeladmin, request, queryset, "extend_deadline", do)
    return None


# --- Notifications -----------------------------------------------------------------------


def _resendable(avatar_ids: Iterable[int]) -> dict[int, Any]:
    """The newest owner notification per avatar that failed or was given up."""
    from notifications.models import Audience, Notification

    latest: dict[int, Any] = {}
    rows = Notification.objects.filter(
        avatar_id__in=list(avatar_ids),
        audience=Audience.OWNER,
        status__in=("failed", "given_up"),
    ).order_by("avatar_id", "-created_at", "-id")
    for notification in rows:
        latest.setdefault(notification.avatar_id, notification)
    return latest


@staff_action(
    permission=roles.RESEND_NOTIFICATION,
    description=gettext_lazy("Resend the owner's notification"),
)
def resend_notification(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]
) -> None:
    from notifications import delivery

    avatars = list(queryset.order_by("pk"))
    resendable = _resendable(a.pk for a in avatars)
    for avatar in avatars:
        notification = resendable.get(avatar.pk)
        if notification is None:
            _report(
                request, avatar, _("nothing to resend: no failed notification."), messages.WARNING
            )
        elif delivery.resend(notification.pk):
            text = _("notification #%(id)s queued again.") % {"id": notification.pk}
            _report(request, avatar, text, messages.SUCCESS)
            log_staff_action(modeladmin, request, avatar, "resend_notification", text)
        else:
            _report(
                request,
                avatar,
                _("notification #%(id)s could not be resent.") % {"id": notification.pk},
                messages.WARNING,
            )


# --- Lost submits (fal's record) -------------------------------------------------------


@staff_action(
    permission=roles.START_TRAINING,
    description=gettext_lazy("fal has no such job: make a lost submit startable…"),
)
def record_no_fal_job(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]
):
    if not _confirmed(request):
        return _confirm(
            modeladmin,
            request,
            queryset,
            action="record_no_fal_job",
            title=_("fal has no such job"),
            question=_(
                "Record that fal has no job for these lost submits? fal's record is asked "
                "once more first; the avatars can then be started again (a new paid training)."
            ),
        )

    def do(avatar: Avatar) -> tuple[str, int]:
        training = _active_training(avatar)
        if training is None:
            return _("no active training."), messages.WARNING
        text = training_service.record_no_fal_job(training, actor=request.user, source=STAFF)
        training.refresh_from_db()
        return text, messages.SUCCESS if training.finished_at else messages.WARNING

    _each(modeladmin, request, queryset, "record_no_fal_job", do)
    return None


AVATAR_ACTIONS = [
    recheck_now,
    start_training,
    retrain,
    cancel_on_fal,
    mark_failed,
    clear_stuck,
    extend_deadline,
    resend_notification,
    record_no_fal_job,
]
