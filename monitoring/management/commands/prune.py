"""``prune``: what django-q2 runs every day, now."""

from __future__ import annotations

from django.utils.translation import gettext as _

from monitoring.management.language import TranslatedCommand
from monitoring.ops import retention


class Command(TranslatedCommand):
    help = _(
        "Delete old webhook deliveries, events of finished trainings, heartbeat rows and "
        "django-q2 task results (ages from the RETENTION_* settings). Nothing of an active "
        "training is deleted."
    )

    dry_run_help = _("Only count what would be deleted.")

    def handle(self, *args, dry_run: bool = False, **options) -> None:
        counts = retention.count() if dry_run else retention.prune()
        verb = _("would delete") if dry_run else _("deleted")
        for name, n in counts.items():
            self.stdout.write(f"{name}: {verb} {n}")
