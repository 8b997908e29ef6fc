"""The avatar admin's actions: thin wrappers around the service functions, each reporting
per avatar what it did; those that spend money or stop a training confirm first.
See docs/staff-guide.md#the-admin and #roles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django_stubs_ext import StrOrPromise

from avatarsite.admin_base import (
    confirm_rows,
    confirmation_page,
    is_confirmed,
    staff_action,
)
from monitoring import billing, roles, transitions, wording
from monitoring import trainings as training_service
from monitoring.admin.avatar_page import telegram_html
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
from monitoring.stuck import stuck_cause
from monitoring.wording import fal_answer_words
from notifications import admin as notification_admin
from notifications import delivery, reachability
from notifications import messages as texts
from notifications.models import Audience, Notification, NotificationKind, OwnerMessage

STAFF = EventSource.STAFF


# What staff may have the owner told when marking an avatar failed (form and previews).
M = OwnerMessage
OWNER_MESSAGE_CHOICES = [(m, m.label) for m in (M.PHOTOS, M.CANCELLED, M.TECHNICAL, M.NONE)]


class ReasonForm(forms.Form):
    """Mark as failed: what the owner is told, and the staff reason (kept internal)."""

    owner_message = forms.ChoiceField(
        label=gettext_lazy("What the owner is told"),
        choices=OWNER_MESSAGE_CHOICES,
        widget=forms.RadioSelect,
        help_text=gettext_lazy(
            "The preview below shows each text in the owner's language. "
            "“No message” records the notification as skipped."
        ),
    )
    reason = forms.CharField(
        label=gettext_lazy("Reason (internal note)"),
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=gettext_lazy(
            "Kept as the training's error message and internal note; never sent to the owner."
        ),
    )


class ExtendForm(forms.Form):
    hours = forms.IntegerField(
        label=gettext_lazy("Hours"),
        min_value=1,
        max_value=24 * 14,
        initial=6,
        help_text=gettext_lazy("The stuck flag is cleared and not raised again before then."),
    )

    def clean(self) -> dict[str, Any]:
        # One deadline for the whole selection: what the action's step is given.
        return {"until": timezone.now() + timedelta(hours=self.cleaned_data.get("hours", 0))}


EXTEND_CHOICES = (1, 6, 24)


def _current(avatar: Avatar) -> Training:
    """The active training of an avatar whose precondition said it has one."""
    assert avatar.current_training is not None
    return avatar.current_training


def why_not(action: str, avatar: Avatar) -> str:
    """Why ``action`` would change nothing for ``avatar`` ("" when it applies): each action's
    precondition, stated once for the avatar page, the confirmation page and the action.
    The transition's conditional update stays underneath as the guard against a race."""
    training = avatar.current_training
    if training is not None and not training.is_active:
        training = None
    status = {"status": avatar.get_status_display()}
    no_training = _("no active training (it is %(status)s).") % status
    match action:
        case "start_training":
            if avatar.status in (AvatarStatus.DRAFT, AvatarStatus.READY_FOR_TRAINING):
                return ""
            return _("it is %(status)s; only draft or ready avatars start.") % status
        case "retrain":
            if avatar.status in transitions.RETRAINABLE:
                return ""
            return _("it is %(status)s; only failed or cancelled avatars are retrained.") % status
        case "recheck_now" | "cancel_on_fal" | "mark_failed":
            return "" if training is not None else no_training
        case "clear_stuck" | "extend_deadline":
            if training is None:
                return no_training
            return "" if training.stuck_since is not None else _("it is not stuck.")
        case "release_held":
            if training is not None and training.is_held:
                return ""
            return _("it is not held for fal's balance.")
        case "record_no_fal_job":
            if training is None or training.fal_request_id:
                return _("no lost submit (fal answered its submit, or nothing is active).")
            if training.lost_submit_given_up_at is None:
                return _("fal's record is still being searched for it.")
            return ""
        case "resend_notification":
            notification = _resendable(avatar)
            if notification is None:
                return _("no undelivered notification to resend.")
            return notification_admin.why_not_resend(notification)
    raise ValueError(f"no precondition for the action {action!r}")


# The avatar page's buttons post the admin action of their name, for one avatar, with this
# field: Django checks the permission and runs the action; the answer comes back to the page.
FROM_PAGE = "from_avatar_page"
# Red on the page and on the confirmation page: they stop a training that may still run.
DESTRUCTIVE = frozenset({"cancel_on_fal", "mark_failed"})


def page_of(request: HttpRequest) -> str:
    """The avatar page the action was started from ("" when it came from the list)."""
    selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
    if request.POST.get(FROM_PAGE) != "1" or len(selected) != 1:
        return ""
    return reverse("admin:monitoring_avatar_change", args=[quote(selected[0])])


def _each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Avatar],
    action: str,
    do: Callable[[Avatar], tuple[str, int]],
) -> HttpResponseRedirect | None:
    """Run ``do`` on each selected avatar whose precondition holds; say why for the others.
    Back to the avatar page when the action was started there."""
    for avatar in queryset.select_related("current_training", "owner").order_by("pk"):
        why = why_not(action, avatar)
        if why:
            text, level = _("left alone: %(why)s") % {"why": why}, messages.WARNING
        else:
            text, level = do(avatar)
        messages.add_message(request, level, f"{avatar.name} (#{avatar.pk}): {text}")
        if level == messages.SUCCESS:
            # Django's admin log, besides the timeline: who did what, from the admin.
            modeladmin.log_change(request, avatar, f"{action}: {text}")
    page = page_of(request)
    return HttpResponseRedirect(page) if page else None


# The confirmation page's title and question, per action; START_COSTS add the estimated cost.
_ASK: dict[str, tuple[StrOrPromise, StrOrPromise]] = {
    "start_training": (
        gettext_lazy("Start training"),
        gettext_lazy("Submit these avatars to fal? Each submit starts a paid training."),
    ),
    "retrain": (
        gettext_lazy("Retrain failed or cancelled avatars"),
        gettext_lazy(
            "Start a new training attempt for each failed or cancelled avatar? Each submit "
            "starts a paid training; the ended attempt keeps its history."
        ),
    ),
    "cancel_on_fal": (
        gettext_lazy("Cancel trainings on fal"),
        gettext_lazy(
            "Ask fal to cancel these trainings? A running job may still complete; the avatar "
            "turns cancelled once fal confirms."
        ),
    ),
    "record_no_fal_job": (
        gettext_lazy("fal has no such job"),
        gettext_lazy(
            "Record that fal has no job for these lost submits? fal's record is asked "
            "once more first; the avatars can then be started again (a new paid training)."
        ),
    ),
    "release_held": (
        gettext_lazy("Send held starts now"),
        gettext_lazy(
            "Send these held starts to fal now, whatever the balance reading says? Each "
            "submit starts a paid training; one that fal refuses as locked is held again."
        ),
    ),
    "mark_failed": (
        gettext_lazy("Mark as failed"),
        gettext_lazy(
            "Mark these trainings as failed? The owner is told what you choose below, "
            "and a job still running on fal is cancelled."
        ),
    ),
    "extend_deadline": (
        gettext_lazy("Extend the stuck deadline"),
        gettext_lazy("Clear the stuck flag and give these trainings more time?"),
    ),
}
START_COSTS = ("start_training", "retrain")
# step(request, avatar, **the confirmed form's cleaned data) -> (message, level)
AvatarStep = Callable[..., tuple[str, int]]


def per_avatar(
    *, permission: str, description: Any, form: type[forms.Form] | None = None
) -> Callable[[AvatarStep], Any]:
    """A staff action made of ``step``, run on each selected avatar whose precondition
    holds; after the confirmation page (with ``form``, valid) when ``_ASK`` has its texts,
    and within ADMIN_BULK_START_MAX for paid starts (each submit is a paid training)."""

    def wrap(step: AvatarStep) -> Any:
        name = step.__name__

        @functools.wraps(step)
        def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]):
            cap = settings.ADMIN_BULK_START_MAX
            if name in START_COSTS and (selected := queryset.count()) > cap:
                messages.error(
                    request,
                    _(
                        "Nothing was started: %(selected)s avatars are selected and one action "
                        "starts at most %(cap)s trainings (ADMIN_BULK_START_MAX). Select fewer "
                        "avatars."
                    )
                    % {"selected": selected, "cap": cap},
                )
                return None
            bound = form(request.POST if is_confirmed(request) else None) if form else None
            if name in _ASK and not (is_confirmed(request) and (bound is None or bound.is_valid())):
                rows = confirm_rows(
                    queryset.select_related("current_training", "owner").order_by("pk"),
                    lambda avatar: avatar.name,
                    functools.partial(why_not, name),
                    Avatar.get_status_display,
                )
                eligible: list[Any] = [row.obj for row in rows if not row.why_not]
                return confirmation_page(
                    modeladmin,
                    request,
                    action=name,
                    title=_ASK[name][0],
                    question=str(_ASK[name][1])
                    + (_estimate_text(eligible) if name in START_COSTS else ""),
                    rows=rows,
                    form=bound,
                    destructive=name in DESTRUCTIVE,
                    previews=owner_previews(eligible) if name == "mark_failed" else None,
                    back_url=page_of(request),
                    carry={FROM_PAGE: "1"} if page_of(request) else None,
                )
            data = bound.cleaned_data if bound else {}
            return _each(modeladmin, request, queryset, name, lambda a: step(request, a, **data))

        return staff_action(permission=permission, description=description)(action)

    return wrap


@staff_action(
    permission=roles.RECHECK_AVATAR,
    description=gettext_lazy("Re-check now on fal (queued to the worker)"),
)
def recheck_now(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Avatar]):
    """From the list: queued to the worker. From the avatar page (one avatar): fal is
    asked in this request, bounded by FAL_CALL_TIMEOUT_SECONDS, and its answer shown."""
    from django_q.tasks import async_task

    if page_of(request):
        return _each(
            modeladmin, request, queryset, "recheck_now", lambda a: _recheck_here(request, a)
        )
    trainings: list[Training] = []

    def queue(avatar: Avatar) -> tuple[str, int]:
        training = _current(avatar)
        trainings.append(training)
        return _("re-check queued (training attempt %(attempt)s).") % {
            "attempt": training.attempt
        }, messages.SUCCESS

    # One task for the whole selection, checked concurrently. The request is in each
    # timeline even if the check changes nothing (not a status change: no transition).
    with transaction.atomic():
        _each(modeladmin, request, queryset, "recheck_now", queue)
        if not trainings:
            return None
        AvatarEvent.objects.bulk_create(
            AvatarEvent(
                avatar_id=training.avatar_id,
                training_id=training.pk,
                kind=EventKind.RECHECK_REQUESTED,
                source=STAFF,
                actor_id=request.user.pk,
            )
            for training in trainings
        )
        async_task(
            "monitoring.tasks.recheck",
            [training.pk for training in trainings],
            source=STAFF,
            actor_id=request.user.pk,
            task_name=f"staff re-check of {len(trainings)} training(s)",
        )
    return None


def _recheck_here(request: HttpRequest, avatar: Avatar) -> tuple[str, int]:
    training = Training.objects.get(pk=_current(avatar).pk)
    reports = training_service.recheck([training], source=STAFF, actor=request.user)
    if not reports:
        return _("Not re-checked: the training has just ended."), messages.WARNING
    training.refresh_from_db()
    text = fal_answer_words(reports[0].after, training.queue_position, reports[0].error)
    return text, messages.WARNING if reports[0].error else messages.SUCCESS


def _estimate_text(avatars: list[Avatar]) -> str:
    """ " 20 trainings, about $48.00." from fal's unit prices ("" when they are unknown)."""
    if not avatars:
        return ""
    try:
        nano = billing.estimate_nano(avatars)
    except billing.PricesUnavailable:
        return ""
    amount = billing.usd(nano) or 0
    return " " + ngettext(
        "%(count)s training, about $%(usd)s.",
        "%(count)s trainings, about $%(usd)s.",
        len(avatars),
    ) % {"count": len(avatars), "usd": f"{amount:,.2f}"}


def _start(avatar: Avatar, request: HttpRequest) -> tuple[str, int]:
    outcome = training_service.start_training(avatar, source=STAFF, actor=request.user)
    training, detail = outcome.training, {"detail": outcome.detail or outcome.status}
    if not outcome.changed:
        return _("not started: %(detail)s.") % detail, messages.WARNING
    if training is not None and training.fal_request_id:
        started = _("training started, fal request %(id)s.") % {"id": training.fal_request_id}
        return started, messages.SUCCESS
    if training is not None and training.submit_unknown_since:
        return f"{outcome.detail}.", messages.WARNING
    if training is not None and training.is_held:
        return wording.held_words(training.held_reason), messages.WARNING
    return _("training started (%(detail)s).") % detail, messages.SUCCESS


@per_avatar(permission=roles.START_TRAINING, description=gettext_lazy("Start training on fal…"))
def start_training(request: HttpRequest, avatar: Avatar) -> tuple[str, int]:
    if avatar.status == AvatarStatus.DRAFT:
        outcome = transitions.mark_ready(avatar, source=STAFF, actor=request.user)
        if not outcome.changed:
            return _("not started: %(detail)s.") % {"detail": outcome.detail}, messages.WARNING
    return _start(avatar, request)


@per_avatar(
    permission=roles.START_TRAINING,
    description=gettext_lazy("Retrain failed or cancelled avatars…"),
)
def retrain(request: HttpRequest, avatar: Avatar) -> tuple[str, int]:
    outcome = transitions.retrain(avatar, source=STAFF, actor=request.user)
    if not outcome.changed:
        return _("not retrained: %(detail)s.") % {"detail": outcome.detail}, messages.WARNING
    return _start(avatar, request)


@per_avatar(permission=roles.CANCEL_TRAINING, description=gettext_lazy("Cancel on fal…"))
def cancel_on_fal(request: HttpRequest, avatar: Avatar) -> tuple[str, int]:
    # cancel_training turns fal's errors into a sentence for staff itself.
    result = training_service.cancel_training(_current(avatar), source=STAFF, actor=request.user)
    return str(result), messages.SUCCESS


def _preview(avatar: Avatar, value: str) -> SafeString | None:
    if value == M.NONE:
        return None
    kind = NotificationKind.CANCELLED if value == M.CANCELLED else NotificationKind.FAILED
    training = Training(avatar=avatar, owner_message=value)
    return telegram_html(texts.render_owner_message(kind, training, owner_message=value))


def owner_previews(avatars: list[Avatar], limit: int = 3) -> list[dict[str, Any]]:
    """Each choice of "mark as failed" as the owner would read it, in their language."""
    return [
        {
            "avatar": avatar,
            "language": avatar.owner.get_language_display(),
            "choices": [(v, label, _preview(avatar, v)) for v, label in OWNER_MESSAGE_CHOICES],
        }
        for avatar in avatars[:limit]
    ]


@per_avatar(
    permission=roles.FAIL_AVATAR, description=gettext_lazy("Mark as failed…"), form=ReasonForm
)
def mark_failed(
    request: HttpRequest, avatar: Avatar, reason: str, owner_message: str
) -> tuple[str, int]:
    training = _current(avatar)
    # Asked before failing: the transition clears fal's sub-state.
    running = (
        training.fal_request_id
        if training.fal_status in (FalStatus.IN_QUEUE, FalStatus.IN_PROGRESS)
        else None
    )
    outcome = transitions.fail(
        training,
        error_message=reason,
        error_type="staff",
        details={"marked_by": request.user.get_username()},
        source=STAFF,
        actor=request.user,
        owner_message=owner_message,
        staff_note=reason,
    )
    if not outcome.changed:
        return _("not marked failed: %(detail)s.") % {"detail": outcome.detail}, messages.WARNING
    cancel = ""
    if running:  # stop the job we just marked failed, so fal does not keep billing it
        try:
            cancel = {
                "CANCELLATION_REQUESTED": _("fal was asked to stop the job"),
                "ALREADY_COMPLETED": _("the job had already finished on fal"),
            }.get(fal.cancel(training.endpoint, running), _("fal no longer knows the job"))
        except fal.FalError as exc:  # reported to staff; the avatar has failed already
            cancel = _("fal cancel failed: %(error)s") % {"error": exc}
    if owner_message == M.NONE:
        text = _("marked failed; the owner is not told (recorded as skipped).")
    else:
        text = _("marked failed; the owner is told: “%(message)s”.") % {
            "message": M(owner_message).label
        }
    return (f"{text} {cancel}." if cancel else text), messages.SUCCESS


@per_avatar(permission=roles.MANAGE_STUCK, description=gettext_lazy("Clear the stuck flag"))
def clear_stuck(request: HttpRequest, avatar: Avatar) -> tuple[str, int]:
    training = _current(avatar)
    if not transitions.clear_stuck(training, source=STAFF, actor=request.user):
        return _("not stuck any more."), messages.WARNING
    if stuck_cause(training, timezone.now()) is not None:
        # Said plainly: the limit is still passed, so the next check flags it again.
        return _(
            "stuck flag cleared, but it is still past its limit: the next check flags it "
            "again. Extend the deadline to keep it off."
        ), messages.WARNING
    return _("stuck flag cleared."), messages.SUCCESS


@per_avatar(
    permission=roles.MANAGE_STUCK,
    description=gettext_lazy("Extend the stuck deadline…"),
    form=ExtendForm,
)
def extend_deadline(request: HttpRequest, avatar: Avatar, until: datetime) -> tuple[str, int]:
    training = _current(avatar)
    if transitions.clear_stuck(training, source=STAFF, actor=request.user, extend_until=until):
        return _("stuck flag cleared; not flagged again before %(until)s.") % {
            "until": until.strftime("%Y-%m-%d %H:%M UTC")
        }, messages.SUCCESS
    return _("not stuck any more."), messages.WARNING


def _resendable(avatar: Avatar) -> Notification | None:
    """The newest undelivered owner notification (failed, given up, unreachable)."""
    return (
        Notification.objects.filter(
            avatar=avatar, audience=Audience.OWNER, status__in=reachability.UNDELIVERED_STATUSES
        )
        .order_by("-created_at", "-id")
        .first()
    )


@per_avatar(
    permission=roles.RESEND_NOTIFICATION,
    description=gettext_lazy("Resend the owner's notification"),
)
def resend_notification(request: HttpRequest, avatar: Avatar) -> tuple[str, int]:
    notification = _resendable(avatar)
    assert notification is not None  # why_not said there is one
    number = {"id": notification.pk}
    if delivery.resend(notification.pk):
        return _("notification #%(id)s queued again.") % number, messages.SUCCESS
    return _("notification #%(id)s could not be resent.") % number, messages.WARNING


@per_avatar(
    permission=roles.START_TRAINING,
    description=gettext_lazy("fal has no such job: make a lost submit startable…"),
)
def record_no_fal_job(request: HttpRequest, avatar: Avatar) -> tuple[str, int]:
    training = _current(avatar)
    text = training_service.record_no_fal_job(training, actor=request.user, source=STAFF)
    training.refresh_from_db()
    return text, messages.SUCCESS if training.finished_at else messages.WARNING


@per_avatar(permission=roles.START_TRAINING, description=gettext_lazy("Send held starts now…"))
def release_held(request: HttpRequest, avatar: Avatar) -> tuple[str, int]:
    training = _current(avatar)
    text = training_service.release(training, actor=request.user, source=STAFF)
    training.refresh_from_db()
    return text, messages.SUCCESS if training.fal_request_id else messages.WARNING


AVATAR_ACTIONS = [
    recheck_now,
    start_training,
    retrain,
    release_held,
    cancel_on_fal,
    mark_failed,
    clear_stuck,
    extend_deadline,
    resend_notification,
    record_no_fal_job,
]
