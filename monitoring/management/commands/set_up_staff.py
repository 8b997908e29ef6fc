"""``set_up_staff``: the first superuser, the staff groups and the bot's API client, once.

The password is never an option: it would stay in the shell history.
See docs/staff-guide.md#commands.
"""

from __future__ import annotations

import getpass
import os
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from monitoring import roles
from monitoring.api.models import ApiClient, Scope
from monitoring.management.language import TranslatedCommand

BOT_SCOPES = f"{Scope.TRAININGS_WRITE},{Scope.AVATARS_READ}"


class Command(TranslatedCommand):
    help = (
        "Create the first superuser, the staff groups (Support, Operators) and the bot's "
        "API client. Password from DJANGO_SUPERUSER_PASSWORD or a prompt."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--bot-client", default="", help="name of the bot's API client to create"
        )
        parser.add_argument("--bot-callback-url", default="", help="https URL for its callbacks")

    def handle(self, *args, **options):
        if not (username := options["username"].strip()):
            raise CommandError("--username must not be empty")
        for change in roles.sync_roles():
            self.stdout.write(f"Groups: {change}")
        self.stdout.write(f"Groups: {', '.join(roles.ROLES)} hold their permissions.")
        self._superuser(username, options["email"].strip())
        if name := options["bot_client"].strip():
            if ApiClient.objects.filter(name=name).exists():
                self.stdout.write(f"API client {name!r} exists already: kept (token unchanged).")
            else:
                command: list[str] = ["--name", name, "--scopes", BOT_SCOPES]
                if options["bot_callback_url"].strip():
                    command += ["--callback-url", options["bot_callback_url"].strip()]
                call_command("create_api_client", *command, stdout=self.stdout)

    def _superuser(self, username: str, email: str) -> None:
        users = get_user_model()
        if users.objects.filter(username=username).exists():
            self.stdout.write(f"User {username!r} exists already: kept.")
            return
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or self._ask_password()
        try:
            validate_password(password, users(username=username, email=email))
        except ValidationError as exc:
            raise CommandError(f"The password was refused: {' '.join(exc.messages)}") from None
        with transaction.atomic():
            users.objects.create_superuser(username=username, email=email, password=password)
        self.stdout.write(f"Superuser {username!r} created.")

    def _ask_password(self) -> str:
        if not sys.stdin.isatty():
            raise CommandError(
                "No password: set DJANGO_SUPERUSER_PASSWORD or run the command in a terminal"
            )
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password (again): "):
            raise CommandError("The two passwords differ")
        return first
