"""``adopt_training``: follow fal requests started elsewhere, one (--request-id) or many
(--from-file, one JSON object per line), for the cut-over from another system."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.core.management.base import CommandError
from django.db import transaction
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from monitoring.management import inputs
from monitoring.management.language import TranslatedCommand
from monitoring.models import Avatar, EventSource, Language, TrainingType
from monitoring.storable import unstorable
from monitoring.trainings import AdoptRefused, AdoptResult, adopt_training

OPTION_FIELDS = (
    "request_id",
    "endpoint",
    "avatar",
    "owner_telegram_id",
    "name",
    "training_type",
    "owner_language",
)
LINE_FIELDS = {*OPTION_FIELDS, "created_at"}


class Command(TranslatedCommand):
    help = (
        "Adopt a fal request started outside the monitor (--request-id RID --endpoint E "
        "with --avatar ID or --owner-telegram-id N --name NAME), or every line of "
        "--from-file FILE (JSON objects with the same fields and an optional created_at)."
    )

    dry_run_help = "ask fal and report, write nothing"
    json_help = "print only JSON on stdout"

    def add_arguments(self, parser):
        parser.add_argument("--request-id")
        parser.add_argument("--endpoint")
        parser.add_argument("--avatar", type=inputs.database_id, help="id of an existing avatar")
        parser.add_argument("--owner-telegram-id", type=inputs.telegram_id)
        parser.add_argument("--name")
        parser.add_argument("--training-type", choices=[c.value for c in TrainingType])
        parser.add_argument("--owner-language", choices=[c.value for c in Language])
        parser.add_argument("--from-file", help="one JSON object per line")
        parser.add_argument(
            "--notify",
            action="store_true",
            help="tell owners of requests that had already ended (the old system may have)",
        )

    def handle(self, *args, **options):
        if options["from_file"]:
            return self._from_file(options)
        fields = {name: options[name] for name in OPTION_FIELDS if options[name] not in (None, "")}
        if not fields.get("request_id") or not fields.get("endpoint"):
            raise CommandError(_("Give --request-id and --endpoint (or --from-file FILE)"))
        try:
            result = self._adopt(fields, notify=options["notify"], dry_run=options["dry_run"])
        except AdoptRefused as exc:
            raise CommandError(_("Not adopted: %s") % exc) from None
        if options["json"]:
            return json.dumps(_as_json(result))
        return _describe(result, dry_run=options["dry_run"])

    def _adopt(self, fields: dict[str, Any], *, notify: bool, dry_run: bool) -> AdoptResult:
        if unknown := set(fields) - LINE_FIELDS:
            raise AdoptRefused(_("unknown fields: %s") % ", ".join(sorted(unknown)))
        for name, value in fields.items():
            if reason := unstorable(value):
                raise AdoptRefused(f"{name}: {reason}")
        kwargs: dict[str, Any] = {
            **{name: fields.get(name) for name in OPTION_FIELDS if name != "avatar"},
            "name": fields.get("name") or "",
            "created_at": _moment(fields.get("created_at")),
            "notify": notify,
            "source": EventSource.COMMAND,
        }
        if fields.get("avatar") is not None:
            avatar_id = fields["avatar"]
            if not isinstance(avatar_id, int) or isinstance(avatar_id, bool):
                raise AdoptRefused(_("avatar must be an avatar id (a number)"))
            try:
                kwargs["avatar"] = Avatar.objects.get(pk=avatar_id)
            except Avatar.DoesNotExist:
                raise AdoptRefused(_("no avatar with id %s") % avatar_id) from None
        if not dry_run:
            return adopt_training(**kwargs)
        # The real thing, rolled back: what it would do, with nothing left behind
        # (owner messages are handed over only on commit).
        with transaction.atomic():
            result = adopt_training(**kwargs)
            transaction.set_rollback(True)
        return result

    def _from_file(self, options) -> None:
        try:
            with open(options["from_file"], encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise CommandError(
                _("Cannot read %(file)s: %(error)s") % {"file": options["from_file"], "error": exc}
            ) from None
        summary: dict[str, list[dict[str, Any]]] = {
            "adopted": [],
            "already_known": [],
            "refused": [],
        }
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
                if not isinstance(fields, dict):
                    raise AdoptRefused(_("not a JSON object"))
                result = self._adopt(fields, notify=options["notify"], dry_run=options["dry_run"])
            except Exception as exc:  # noqa: BLE001 - one bad line never stops the good ones
                verdict, reason = "failed", f"{type(exc).__name__}: {exc}"
                if isinstance(exc, AdoptRefused):
                    verdict, reason = "refused", str(exc)
                elif isinstance(exc, ValueError):
                    verdict, reason = "refused", _("not JSON: %s") % exc
                summary["refused"].append({"line": number, "reason": reason})
                self.stderr.write(f"line {number}: {verdict}: {reason}")
                continue
            entry = {"line": number, **_as_json(result)}
            summary["adopted" if result.adopted else "already_known"].append(entry)
            self.stderr.write(f"line {number}: {_describe(result, dry_run=options['dry_run'])}")
        if options["json"]:
            self.stdout.write(json.dumps({"dry_run": options["dry_run"], **summary}))
        else:
            self.stdout.write(
                _("%(adopted)s adopted, %(known)s already known, %(refused)s refused%(dry)s")
                % {
                    "adopted": len(summary["adopted"]),
                    "known": len(summary["already_known"]),
                    "refused": len(summary["refused"]),
                    "dry": _(" (dry run: nothing written)") if options["dry_run"] else "",
                }
            )
            for refused in summary["refused"]:
                self.stdout.write(f"  line {refused['line']}: {refused['reason']}")
        if summary["refused"]:
            # After the summary: the exit status tells a script that some lines failed.
            raise CommandError(_("%s line(s) refused") % len(summary["refused"]))


def _moment(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if (moment := parse_datetime(value) if isinstance(value, str) else None) is None:
        raise AdoptRefused(_("created_at must be an ISO 8601 date and time"))
    return moment


def _as_json(result: AdoptResult) -> dict[str, Any]:
    return {
        "id": str(result.avatar.pk),
        "fal_request_id": result.training.fal_request_id,
        "status": result.avatar.status,
        "adopted": result.adopted,
    }


def _describe(result: AdoptResult, *, dry_run: bool) -> str:
    values = {
        "request": result.training.fal_request_id,
        "id": result.avatar.pk,
        "status": result.avatar.status,
    }
    if not result.adopted:
        return _("Already followed: fal request %(request)s is avatar %(id)s (%(status)s)") % values
    text = _("Adopted fal request %(request)s as avatar %(id)s (%(status)s)") % values
    return text + (_(" (dry run: nothing written)") if dry_run else "")
