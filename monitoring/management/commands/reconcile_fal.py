"""``reconcile_fal``: compare fal's record of our endpoints with our trainings."""

from __future__ import annotations

import json

from django.core.management.base import CommandError
from django.utils.translation import gettext as _

from monitoring import reconcile
from monitoring.fal import platform
from monitoring.management.language import TranslatedCommand
from monitoring.models import EventSource


class Command(TranslatedCommand):
    help = (
        "List fal's record for our trainers over the last --since HOURS (default "
        "FAL_RECONCILE_HOURS): requests we do not follow (one staff alert, the admin's "
        "list to adopt them from) and trainings fal finished that we still show active "
        "(finished now, through the normal check, unless --dry-run)."
    )

    dry_run_help = "report only: no alert, no list, no change"
    json_help = "print only JSON on stdout"

    def add_arguments(self, parser):
        parser.add_argument("--since", type=float, help="hours back from now (max 2160)")

    def handle(self, *args, **options):
        since = options["since"]
        if since is not None and not 0 < since <= 90 * 24:
            raise CommandError(_("--since must be between 0 and 2160 hours (fal keeps 90 days)"))
        try:
            report = reconcile.reconcile_fal(
                since_hours=since, dry_run=options["dry_run"], source=EventSource.COMMAND
            )
        except platform.PlatformUnavailable as exc:
            raise CommandError(_("fal's record could not be read: %s") % exc) from None
        if options["json"]:
            return json.dumps(report.as_json())
        self.stdout.write(
            _(
                "%(checked)s requests in fal's record, %(unknown)s unknown to us, %(done)s finished now"
            )
            % {
                "checked": report.checked,
                "unknown": len(report.unknown_to_us),
                "done": len(report.finished_now),
            }
            + (_(" (dry run: nothing changed)") if options["dry_run"] else "")
        )
        for entry in report.unknown_to_us:
            self.stdout.write(
                f"  unknown: {entry['request_id']} {entry['endpoint_id']} "
                f"HTTP {entry['status_code']} ended {entry['ended_at']} "
                f"cost {'$' + entry['cost_usd'] if entry.get('cost_usd') else '?'}"
            )
        for entry in report.finished_now:
            self.stdout.write(
                f"  finished: {entry['request_id']} avatar {entry['avatar_id']} → {entry['status']}"
            )
