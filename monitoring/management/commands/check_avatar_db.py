"""``check_avatar_db``: the avatars in the database, as a table or as JSON."""

from __future__ import annotations

import argparse
import json

from django.core.management.base import CommandError
from django.db.models import Count, Q, Sum
from django.utils.translation import gettext as _

from monitoring import billing
from monitoring.api import representation
from monitoring.management import inputs
from monitoring.management.language import TranslatedCommand
from monitoring.models import Avatar, AvatarStatus, CostState, FalStatus
from monitoring.ops import attention

MAX_LIMIT = 100_000


class Command(TranslatedCommand):
    help = "List avatars with their training state (filters: --status, --stuck, --owner)."

    json_help = "print a JSON list on stdout"

    def add_arguments(self, parser):
        parser.add_argument("--status", choices=[c.value for c in AvatarStatus])
        parser.add_argument("--stuck", action="store_true", help="only avatars flagged stuck")
        parser.add_argument(
            "--owner", type=inputs.text(65), help="owner's Telegram id or @username"
        )
        parser.add_argument(
            "--limit",
            type=inputs.integer(1, MAX_LIMIT),
            default=500,
            help=f"at most this many avatars (1 to {MAX_LIMIT})",
        )

    def handle(self, *args, **options):
        avatars = (
            Avatar.objects.select_related("owner", "current_training")
            .prefetch_related("current_training__kept_files")
            .annotate(
                cost_nano=Sum("trainings__cost_nano_usd"),
                costs_known=Count(
                    "trainings",
                    filter=Q(trainings__cost_state__in=[CostState.BILLED, CostState.NOT_BILLED]),
                ),
            )
            .order_by("-created_at")
        )
        if options["status"]:
            avatars = avatars.filter(status=options["status"])
        if options["stuck"]:
            avatars = avatars.filter(attention.stuck_filter())
        if options["owner"]:
            owner = options["owner"].lstrip("@")
            if owner.lstrip("-").isdigit():
                try:
                    telegram_id = inputs.telegram_id(owner)
                except argparse.ArgumentTypeError as exc:
                    raise CommandError(f"--owner: {exc}") from None
                avatars = avatars.filter(owner__telegram_id=telegram_id)
            else:
                avatars = avatars.filter(owner__username__iexact=owner)
        rows = [self._row(avatar) for avatar in avatars[: options["limit"]]]
        if options["json"]:
            return json.dumps(rows, ensure_ascii=False, indent=1)
        self._table(rows)

    def _row(self, avatar: Avatar) -> dict:
        training = avatar.current_training
        checked = training.last_checked_at if training else None
        return {
            **representation.current_data(avatar, training),
            "cost": representation.cost_data(training) if training else None,
            "cost_usd": (
                billing.usd_text(getattr(avatar, "cost_nano", None) or 0)
                if getattr(avatar, "costs_known", 0)
                else None
            ),
            "last_checked_at": checked.isoformat() if checked else None,
        }

    def _table(self, rows: list[dict]) -> None:
        # Headings and statuses in the reader's language; ids and fal's texts as they are.
        statuses = {**dict(FalStatus.choices), **dict(AvatarStatus.choices)}
        columns = [
            ("id", "id"),
            ("name", _("name")),
            ("status", _("status")),
            ("fal_status", _("fal status")),
            ("stuck", _("stuck")),
            ("fal_request_id", _("fal request id")),
            ("owner_telegram_id", _("owner's Telegram id")),
            ("error", _("error")),
        ]

        def cell(row: dict, key: str) -> str:
            value = row[key]
            if key in ("status", "fal_status") and value:
                value = statuses.get(value, value)
            elif key == "stuck":
                value = _("yes") if value else ""
            return str(value if value is not None else "-")[:40]

        headings = [str(heading) for _key, heading in columns]
        table = [[cell(row, key) for key, _heading in columns] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in table]) for i, h in enumerate(headings)]
        for r in [headings, *table]:
            self.stdout.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        self.stdout.write(_("%d avatar(s)") % len(rows))
