"""``create_api_client``: a client of the bot API, its token and callback secret shown once."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal, InvalidOperation

from django.core.management.base import CommandError
from django.db import IntegrityError

from monitoring.api import callbacks, tokens
from monitoring.management.language import TranslatedCommand


def _budget(value: str) -> Decimal:
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {value!r}") from None
    if not amount.is_finite() or amount <= 0 or amount >= Decimal("1e10"):
        raise argparse.ArgumentTypeError("must be a positive amount in USD below 10,000,000,000")
    return amount.quantize(Decimal("0.01"))


class Command(TranslatedCommand):
    help = (
        "Create an API client. Its token and callback secret are printed once and cannot "
        "be shown again (only the token's hash is stored)."
    )

    json_help = "print only a JSON object"

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes", required=True, help="comma-separated: trainings:write,avatars:read"
        )
        parser.add_argument("--callback-url", default="", help="https URL for event callbacks")
        parser.add_argument(
            "--callback-stuck", action="store_true", help="also send avatar.stuck events"
        )
        parser.add_argument(
            "--daily-budget",
            type=_budget,
            help="USD a day (UTC) this client may spend; its starts answer 402 beyond it",
        )

    def handle(self, *args, **options):
        if not (name := options["name"].strip()):
            raise CommandError("--name must not be empty")
        if not (scopes := [s.strip() for s in options["scopes"].split(",") if s.strip()]):
            raise CommandError("--scopes needs at least one scope")
        try:
            tokens.validate_scopes(scopes)
        except ValueError as exc:
            raise CommandError(f"--scopes: {exc}") from None
        if url := options["callback_url"].strip():
            try:
                callbacks.validate_callback_url(url)
            except callbacks.CallbackRefused as exc:
                raise CommandError(f"--callback-url: {exc}") from None
        try:
            made = tokens.create_client(
                name=name,
                scopes=scopes,
                callback_url=url,
                callback_stuck=options["callback_stuck"],
                daily_budget_usd=options["daily_budget"],
            )
        except IntegrityError:
            raise CommandError(f"An API client named {name!r} exists already") from None
        if options["json"]:
            answer = {"name": made.client.name, "token": made.token}
            return json.dumps({**answer, "callback_secret": made.callback_secret})
        self.stdout.write(f"API client {made.client.name!r} created (scopes: {', '.join(scopes)}).")
        self.stdout.write(f"Token (shown once, store it now): {made.token}")
        self.stdout.write(f"Callback secret (shown once): {made.callback_secret}")
