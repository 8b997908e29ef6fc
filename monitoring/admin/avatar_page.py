"""The avatar page: a summary at the top, the actions the state and the user allow, the timeline.
See docs/staff-guide.md#the-avatar-page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext as _

from monitoring import billing, eta, file_views, files, roles, stuck
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    CostState,
    FalStatus,
    FileState,
    KeptFile,
    Training,
)
from monitoring.wording import event_words, status_label
from notifications import reachability
from notifications.messages import last_error_words
from notifications.models import Audience, Notification, NotificationStatus

FOLD_AT = 240


def _ago(moment: datetime, now: datetime) -> str:
    seconds = (now - moment).total_seconds()
    if 0 <= seconds < 60:
        # timesince says "0 minutes" for all of these; events seconds apart must differ.
        return _("%(n)s s ago") % {"n": int(seconds)}
    return _("%(ago)s ago") % {"ago": timesince(moment, now, depth=2)}


def _when(moment: datetime | None, now: datetime, due: bool = False) -> SafeString:
    """ "2026-12-01 19:02:14 UTC (3 minutes ago)" with the exact time in a <time> element.
    ``due``: "overdue by 26 s" once passed (never "26 s ago": it has not happened)."""
    if moment is None:
        return mark_safe("—")
    seconds = int((now - moment).total_seconds())
    if due and moment <= now:
        relative = (
            _("overdue by %(n)s s") % {"n": seconds}
            if seconds < 60
            else _("overdue by %(delay)s") % {"delay": timesince(moment, now, depth=2)}
        )
    elif moment <= now:
        relative = _ago(moment, now)
    elif (moment - now).total_seconds() < 60:
        relative = _("in %(n)s s") % {"n": int((moment - now).total_seconds())}
    else:
        relative = _("in %(delay)s") % {"delay": timeuntil(moment, now, depth=2)}
    return format_html(
        '<time datetime="{}">{} UTC</time> <span class="quiet{}">({})</span>',
        moment.isoformat(),
        moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        " overdue" if due and moment <= now else "",
        relative,
    )


def state_words(avatar: Avatar, training: Training | None) -> str:
    """The state in words: "Training: in fal's queue, position 3"."""
    label = avatar.get_status_display()
    if avatar.status != AvatarStatus.TRAINING or training is None:
        return str(label)
    words: dict[str, str] = {
        FalStatus.SUBMITTING: _("being submitted to fal"),
        FalStatus.HELD: _("waiting for fal balance"),
        FalStatus.IN_QUEUE: _("in fal's queue"),
        FalStatus.IN_PROGRESS: _("training on fal"),
        FalStatus.COMPLETED: _("finished on fal, result not fetched yet"),
    }
    sub = queue_words(training, words.get(training.fal_status, training.get_fal_status_display()))
    return _("%(status)s: %(detail)s") % {"status": label, "detail": sub}


def queue_words(training: Training, state: str) -> str:
    """``state`` with the queue position and a pending cancel: "In queue, #3"."""
    if training.fal_status == FalStatus.IN_QUEUE and training.queue_position is not None:
        state = _("%(state)s, #%(position)s") % {
            "state": state,
            "position": training.queue_position,
        }
    if training.cancel_requested_at:
        state = _("%(state)s, cancel requested") % {"state": state}
    return state


def owner_told(training: Training, now: datetime) -> SafeString:
    """ "The owner was told: <text> at <time>", or why not (yet)."""
    notification = (
        Notification.objects.filter(training=training, audience=Audience.OWNER)
        .order_by("-created_at", "-id")
        .first()
    )
    context: dict[str, Any] = {"training": training, "notification": notification}
    if notification is not None:
        context |= {
            "text": telegram_html(notification.text),
            "sent": _when(notification.sent_at, now),
            "written": _when(notification.created_at, now),
            "error": last_error_words(notification.last_error)[:300],
            "held": notification.status == NotificationStatus.UNREACHABLE
            and reachability.is_unreachable(notification.chat_id),
        }
    return render_to_string("admin/monitoring/avatar/owner_told.html", context)


def telegram_html(text: str) -> SafeString:
    """A message as Telegram shows it: its HTML (values escaped when rendered), line breaks."""
    return mark_safe(text.replace("\n", "<br>"))  # noqa: S308 - rendered with escaped values


def fold(text: str) -> SafeString:
    """Long texts folded behind a <details>, the first line visible."""
    if len(text) <= FOLD_AT:
        return format_html('<span class="wrap">{}</span>', text)
    return format_html(
        '<details class="fold"><summary>{}…</summary><pre class="wrap">{}</pre></details>',
        text[:FOLD_AT],
        text,
    )


def summary(avatar: Avatar, now: datetime | None = None) -> SafeString:
    """The rows at the top of the avatar page."""
    now = now or timezone.now()
    training = avatar.current_training
    context: dict[str, Any] = {"avatar": avatar, "state": state_words(avatar, training)}
    if training is not None:
        # The cost of every attempt together (failed ones included); how many are looked up.
        costs = list(
            Training.objects.filter(avatar=avatar).values_list("cost_state", "cost_nano_usd")
        )
        billed = sum(nano or 0 for state, nano in costs if state == CostState.BILLED)
        pending = sum(1 for state, _nano in costs if state in ("", CostState.PENDING))
        context |= {
            "training": training,
            "error": fold(training.error_message or "—"),
            "note": fold(training.staff_note),
            "kept": kept_files_words(avatar, training),
            "owner": owner_told(training, now),
            "cost": billing.usd_text(billed),
            "cost_pending": pending
            and _("%(count)s attempt(s) not known yet") % {"count": pending},
        }
    if training is not None and training.is_active:
        extended = training.stuck_deadline_extended_until
        context |= {
            "why_stuck": training.stuck_since and stuck.live_words(training, now),
            "flagged": training.stuck_since
            and _("flagged %(ago)s") % {"ago": _ago(training.stuck_since, now)},
            "extended": extended and extended > now and _when(extended, now),
            "last_check": _when(training.last_checked_at, now),
            "check_error": training.last_check_error[:300],
            "next_check": _when(training.next_check_at, now, due=True),
            "ready": eta.words(training, now),
        }
    return render_to_string("admin/monitoring/avatar/summary.html", context)


def cost_words(training: Training) -> str:
    """What fal billed for one attempt, in the reader's language."""
    if training.cost_state == CostState.BILLED:
        return f"${billing.usd_text(training.cost_nano_usd)}"
    if training.cost_state == CostState.NOT_BILLED:
        return str(_("not billed"))
    if training.finished_at is None:
        return "—"
    return str(_("being looked up"))


def kept_files_words(avatar: Avatar, training: Training) -> SafeString | None:
    """Our copies: state, size and SHA-256, and staff download links."""
    data = files.files_data(training, links=False)
    if data is None:
        return None
    states = {"pending": _("being copied"), "kept": _("kept"), "failed": _("not kept")}
    kinds = (("lora", _("LoRA")), ("config", _("config")))
    context = {
        "avatar": avatar,
        "state": states.get(data["state"], data["state"]),
        "files": [(kind, label, data[kind]) for kind, label in kinds if data[kind] is not None],
        "error": data["error"],
    }
    return render_to_string("admin/monitoring/avatar/kept_files.html", context)


@permission_required(roles.VIEW_AVATAR, raise_exception=True)
def download_file(request: HttpRequest, object_id: str, kind: str) -> HttpResponse:
    """Staff download of a kept file, checked here (the page only offers the link)."""
    avatar = get_object_or_404(Avatar, pk=object_id)
    row = (
        KeptFile.objects.filter(
            training_id=avatar.current_training_id, kind=kind, state=FileState.KEPT
        ).first()
        if avatar.current_training_id
        else None
    )
    if row is None:
        raise Http404(_("No kept file."))
    return file_views.file_response(request, row, attachment=True)  # type: ignore[return-value]


def timeline(avatar: Avatar, now: datetime | None = None, limit: int = 200) -> SafeString:
    """Newest first: when (seconds, UTC, relative), what, who, the change, the text."""
    now = now or timezone.now()
    events = (
        AvatarEvent.objects.filter(avatar=avatar)
        .select_related("actor", "training")
        .order_by("-created_at", "-id")[:limit]
    )
    rows = [
        {
            "event": event,
            "when": _when(event.created_at, now),
            "change": f"{status_label(event.old_status)} → {status_label(event.new_status)}"
            if event.new_status
            else "",
            "details": fold(words) if (words := event_words(event)) else "",
        }
        for event in events
    ]
    labels = (_("when"), _("what"), _("change"), _("attempt"), _("details"))
    return render_to_string(
        "admin/monitoring/avatar/timeline.html", {"events": rows, "labels": labels}
    )


def live_stuck_words(training: Training) -> str:
    return stuck.live_words(training, timezone.now())
