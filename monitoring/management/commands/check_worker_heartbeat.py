"""The worker container's HEALTHCHECK: fail when the periodic check or the notifications have
gone quiet (a hung cluster still has a running process, which Docker would call healthy)."""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db import DatabaseError
from django.utils.translation import gettext as _

from monitoring.management import inputs
from monitoring.management.language import TranslatedCommand
from monitoring.ops import health


class Command(TranslatedCommand):
    help = _(
        "Exit non-zero when the last periodic check started longer ago than --max-age seconds "
        "(default: three check intervals), or when notifications are late (a message due and "
        "not taken for more than two intervals)."
    )
    # Docker runs this every 30 s: configuration warnings belong in the worker's
    # own start-up log, not in every health probe.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--max-age",
            type=inputs.integer(1, 7 * 24 * 3600),
            default=None,
            metavar="SECONDS",
            help=_("How old the last run may be (default: three check intervals)."),
        )

    def handle(self, *args, max_age: int | None = None, **options) -> str:
        try:
            beat = health.heartbeat()
        except DatabaseError as exc:
            raise CommandError(
                _("unhealthy: database unreachable (%(error)s)") % {"error": type(exc).__name__}
            ) from None
        limit = max_age if max_age is not None else beat.late_after_seconds
        if beat.last_run is None:
            raise CommandError(_("unhealthy: no periodic check has run yet"))
        assert beat.age_seconds is not None  # known whenever a run is
        if beat.age_seconds > limit:
            raise CommandError(
                _("unhealthy: the last periodic check started %(age)d s ago (limit %(limit)d s)")
                % {"age": beat.age_seconds, "limit": limit}
            )
        late = health.notifications_late()
        if late.late:
            raise CommandError(
                _(
                    "unhealthy: %(n)d notification(s) due for more than %(limit)d s and not "
                    "taken (is the notification side running?)"
                )
                % {"n": late.waiting, "limit": late.late_after_seconds}
            )
        return _("ok: the last periodic check started %(age)d s ago") % {"age": beat.age_seconds}
