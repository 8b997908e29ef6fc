"""``manual_status_check``: ask fal now about chosen trainings with the worker's own check
code. See docs/staff-guide.md#commands."""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from monitoring.management import inputs
from monitoring.management.language import TranslatedCommand
from monitoring.models import Avatar, EventSource, Training
from monitoring.status_checks import check_trainings

BATCH = 25


class Command(TranslatedCommand):
    help = _(
        "Check trainings on fal now: --avatar ID (repeatable), --all active trainings, or "
        "--stuck ones. Prints what changed; --dry-run reads fal without writing."
    )

    dry_run_help = _("Ask fal, but change nothing here.")

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--avatar",
            dest="avatar_ids",
            action="append",
            type=inputs.database_id,
            default=[],
            metavar="ID",
            help=_("An avatar id (repeat for several)."),
        )
        parser.add_argument("--all", action="store_true", help=_("Every active training."))
        parser.add_argument("--stuck", action="store_true", help=_("Every stuck training."))
        parser.add_argument(
            "--batch-size",
            type=inputs.integer(1, 10_000),
            default=BATCH,
            metavar="N",
            help=_("How many trainings to check between progress lines (default %(default)s)."),
        )

    def handle(
        self,
        *args,
        avatar_ids: list[int],
        all: bool,
        stuck: bool,
        dry_run: bool,
        batch_size: int,
        **options,
    ) -> None:
        if [bool(avatar_ids), all, stuck].count(True) != 1:
            raise CommandError(_("Choose exactly one of --avatar ID, --all or --stuck."))
        if not (trainings := list(self.select(avatar_ids, all, stuck))):
            self.stdout.write(_("Nothing to check."))
            return

        total, changed, failed = len(trainings), 0, 0
        prefix = _("[dry run] ") if dry_run else ""
        for start in range(0, total, batch_size):
            batch = trainings[start : start + batch_size]
            for report in check_trainings(batch, source=EventSource.COMMAND, dry_run=dry_run):
                line = self.describe(report)
                if report.error:
                    failed += 1
                    self.stderr.write(prefix + line)
                elif report.changed:
                    changed += 1
                    self.stdout.write(self.style.SUCCESS(prefix + line))
                elif options["verbosity"] >= 2:
                    self.stdout.write(prefix + line)
            if total > batch_size:
                self.stderr.write(
                    _("checked %(done)d of %(total)d")
                    % {"done": min(start + batch_size, total), "total": total}
                )
        summary = _("%(total)d checked, %(changed)d changed, %(failed)d errors") % {
            "total": total,
            "changed": changed,
            "failed": failed,
        }
        if dry_run:
            summary += " " + _("(dry run: nothing written)")
        self.stdout.write(summary)
        if failed:
            raise CommandError(
                _("%(failed)d of %(total)d checks failed (see above)")
                % {"failed": failed, "total": total}
            )

    def select(
        self, avatar_ids: list[int], all: bool, stuck: bool
    ) -> QuerySet[Training] | list[Training]:
        active = (
            Training.objects.filter(finished_at__isnull=True)
            .select_related("avatar")
            .order_by("pk")
        )
        if all:
            return active
        if stuck:
            return active.filter(stuck_since__isnull=False)
        wanted = list(dict.fromkeys(avatar_ids))
        avatars = Avatar.objects.select_related("current_training").in_bulk(wanted)
        if unknown := [str(pk) for pk in wanted if pk not in avatars]:
            raise CommandError(_("Unknown avatar id(s): %(ids)s") % {"ids": ", ".join(unknown)})
        selected = []
        for pk in wanted:
            avatar = avatars[pk]
            training = avatar.current_training
            if training is None or training.finished_at is not None:
                self.stdout.write(
                    _("avatar %(id)d: no active training (status %(status)s), skipped")
                    % {"id": pk, "status": avatar.status}
                )
            else:
                selected.append(training)
        return selected

    @staticmethod
    def describe(report) -> str:
        head = _("avatar %(avatar)s (training %(training)s)") % {
            "avatar": report.avatar_id,
            "training": report.training_id,
        }
        if report.error:
            return f"{head}: {_('error')}: {report.error}"
        if report.changed:
            return f"{head}: {report.before} → {report.after}" + (
                f" ({report.summary})" if report.summary else ""
            )
        unchanged = _("unchanged")  # not inside the f-string: makemessages would miss it
        return f"{head}: {unchanged} ({report.after})" + (
            f" {report.summary}" if report.summary else ""
        )
