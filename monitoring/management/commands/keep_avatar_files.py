"""``keep_avatar_files``: copy the files of trainings that completed before they were kept."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

from django.core.management.base import CommandError
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from monitoring import files
from monitoring.management import inputs
from monitoring.management.language import TranslatedCommand
from monitoring.models import FileState, KeptFile, Training, TrainingOutcome


class Command(TranslatedCommand):
    help = _(
        "Copy the LoRA and config files of completed avatars into our storage (avatar_files) "
        "where they are not kept yet, and retry those that failed. Prints a summary: kept, "
        "already kept, gone at fal, failed."
    )

    dry_run_help = _("only count what would be copied")
    json_help = _("print the summary as JSON")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--avatar", type=inputs.database_id, help=_("only this avatar (id)"))
        parser.add_argument(
            "--since",
            type=inputs.integer(1, 36_500),
            metavar="DAYS",
            help=_("only trainings finished in the last DAYS"),
        )

    def handle(self, *args, **options) -> None:
        trainings = Training.objects.filter(
            outcome=TrainingOutcome.COMPLETED, avatar__current_training=F("pk")
        ).order_by("pk")
        if options["avatar"] is not None:
            trainings = trainings.filter(avatar_id=options["avatar"])
            if not trainings.exists():
                raise CommandError(
                    _("Avatar %(id)s has no completed training.") % {"id": options["avatar"]}
                )
        if options["since"] is not None:
            trainings = trainings.filter(
                finished_at__gte=timezone.now() - timedelta(days=options["since"])
            )
        chosen = list(trainings)
        summary = {"kept": 0, "already_kept": 0, "gone_at_fal": 0, "failed": 0}
        if options["dry_run"]:
            summary = {"would_copy": 0, "already_kept": 0}
        progress = sys.stderr.isatty() and not options["json"]
        for index, training in enumerate(chosen, start=1):
            if progress:
                filled = 30 * index // len(chosen)
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {index}/{len(chosen)}")
                sys.stderr.flush()
            self._one(training, summary, dry_run=options["dry_run"])
        if progress:
            sys.stderr.write("\n")
        text = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in summary.items())
        self.stdout.write(json.dumps(summary) if options["json"] else text)
        if summary.get("failed"):
            raise CommandError(_("Some files could not be kept (see the admin)."))

    def _one(self, training: Training, summary: dict[str, int], *, dry_run: bool) -> None:
        kept = {row.kind for row in training.kept_files.all() if row.state == FileState.KEPT}
        wanted = files._sources(training)
        if wanted and kept.issuperset(wanted):
            summary["already_kept"] += 1
            return
        if dry_run:
            summary["would_copy"] += 1
            return
        files.retry_now(training)
        files.keep(training.pk, due_only=False)
        states = set(training.kept_files.values_list("state", "failure"))
        if all(state == FileState.KEPT for state, _failure in states):
            summary["kept"] += 1
        elif any(failure == KeptFile.Failure.GONE for _state, failure in states):
            summary["gone_at_fal"] += 1
        else:
            summary["failed"] += 1
