"""What needs staff attention now: the problems banner, the dashboard verdict, the counts.

Gathered lazily, only when a page shows them, for users with ``monitoring.view_avatar``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Min, Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import SimpleLazyObject
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from monitoring.models import Avatar, AvatarStatus, Training
from monitoring.ops import dashboard, health
from notifications import reachability
from notifications.models import Notification, NotificationKind, NotificationStatus

BACKLOG_LATE_MINUTES = 10
FAL_ACCOUNT_WINDOW = timedelta(hours=2)

# Problems other apps report, registered in their AppConfig.ready().
EXTRA_PROBLEMS: list[Callable[[datetime], list[Problem]]] = []


@dataclass(frozen=True)
class Problem:
    code: str
    text: str
    url: str = ""


def stuck_filter() -> Q:
    return Q(
        current_training__stuck_since__isnull=False, current_training__finished_at__isnull=True
    )


def counts() -> dict[str, int]:
    return Avatar.objects.aggregate(
        stuck=Count("pk", filter=stuck_filter()),
        active=Count("pk", filter=Q(status=AvatarStatus.TRAINING)),
        failed=Count("pk", filter=Q(status=AvatarStatus.ERROR)),
    )


def problems(now: datetime | None = None) -> list[Problem]:
    """Everything wrong right now, worst first."""
    now = now or timezone.now()
    avatars = reverse("admin:monitoring_avatar_changelist")
    found: list[Problem] = []

    def add(code: str, text: str, url: str = "") -> None:
        found.append(Problem(code, text, url))

    stuck = Training.objects.filter(finished_at__isnull=True, stuck_since__isnull=False).count()
    if stuck:
        add(
            "stuck",
            ngettext("%(n)s training is stuck", "%(n)s trainings are stuck", stuck) % {"n": stuck},
            avatars + "?stuck=yes",
        )
    beat = health.heartbeat(now)
    if beat.last_run is None:
        add("check_late", _("The periodic check has never run: is the worker up?"))
    elif beat.late:
        add(
            "check_late",
            _("The periodic check is late: the last run started %(minutes)s min ago.")
            % {"minutes": int((beat.age_seconds or 0) // 60)},
        )
    errors = dashboard.fal_error_rate(now)
    if errors["errors"]:
        add(
            "fal_errors",
            ngettext(
                "fal answered %(errors)s of %(checked)s status checks with an error in the "
                "last hour",
                "fal answered %(errors)s of %(checked)s status checks with an error in the "
                "last hour",
                errors["errors"],
            )
            % {"errors": errors["errors"], "checked": errors["checked"]},
            reverse("admin:monitoring_training_changelist") + "?check_failing=yes",
        )
    account = Notification.objects.filter(  # the newest (Meta.ordering)
        kind=NotificationKind.FAL_ACCOUNT, created_at__gte=now - FAL_ACCOUNT_WINDOW
    ).first()
    if account is not None:
        add(
            "fal_account",
            _("fal rejected our key (401): check FAL_KEY.")
            if (account.context or {}).get("status_code") == 401
            else _("fal locked the account (403): check the balance and billing."),
            reverse("admin:notifications_notification_change", args=[account.pk]),
        )
    if health.sending_paused():
        add(
            "notifications_paused",
            _("Notifications are not being sent: Telegram rejected the bot token."),
        )
    oldest = Notification.objects.filter(
        status__in=(NotificationStatus.PENDING, NotificationStatus.SENDING),
        next_attempt_at__lte=now,
    ).aggregate(oldest=Min("created_at"))["oldest"]
    if oldest is not None and now - oldest > timedelta(minutes=BACKLOG_LATE_MINUTES):
        add(
            "notifications_late",
            _("Notifications are not being consumed: the oldest waits for %(minutes)s min.")
            % {"minutes": int((now - oldest).total_seconds() // 60)},
        )
    if undelivered := reachability.undelivered_count():
        add(
            "notifications_failed",
            ngettext(
                "%(n)s owner was not told how their training ended",
                "%(n)s owners were not told how their training ended",
                undelivered,
            )
            % {"n": undelivered},
            avatars + "?notification=problem",
        )
    for extra in EXTRA_PROBLEMS:
        found.extend(extra(now))
    if settings.TELEGRAM_STAFF_CHAT_ID is None:
        add(
            "staff_chat_missing",
            _(
                "The staff chat is not configured (TELEGRAM_STAFF_CHAT_ID): stuck and "
                "account alerts are recorded but not sent."
            ),
        )
    return found


def context(request: HttpRequest) -> dict[str, Any]:
    def may_see() -> bool:
        user = getattr(request, "user", None)
        return bool(user and user.is_authenticated and user.has_perm("monitoring.view_avatar"))

    return {
        "attention": SimpleLazyObject(lambda: {"problems": problems()} if may_see() else {}),
        "monitoring_counts": SimpleLazyObject(lambda: counts() if may_see() else {}),
    }
