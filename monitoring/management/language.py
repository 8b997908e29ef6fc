"""The language of a command's human-readable output: ``--language``, else LANGUAGE_CODE.

``--json`` output and log lines are never translated.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import translation

from monitoring import storable


class TranslatedCommand(BaseCommand):
    # The help of the shared flags: a command that sets one has that flag.
    dry_run_help: str = ""
    json_help: str = ""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        for flag, text in (("--dry-run", self.dry_run_help), ("--json", self.json_help)):
            if text:
                parser.add_argument(flag, action="store_true", help=text)
        parser.add_argument(
            "--language",
            choices=[code for code, _name in settings.LANGUAGES],
            help="language of the human-readable output (default: LANGUAGE_CODE); "
            "--json output is never translated",
        )
        return parser

    def execute(self, *args: Any, **options: Any) -> str | None:
        # Whatever a caller left active (a test's request, call_command from a view) does
        # not decide: the option or the setting does.
        with translation.override(options.get("language") or settings.LANGUAGE_CODE):
            # Refused: text the database cannot store (a NUL, bytes that are not UTF-8).
            named = [(f"--{name.replace('_', '-')}", value) for name, value in options.items()]
            for label, value in [*((str(n), v) for n, v in enumerate(args, 1)), *named]:
                if isinstance(value, str | list | tuple) and (reason := storable.unstorable(value)):
                    raise CommandError(f"{label}: {reason}")
            return super().execute(*args, **options)
