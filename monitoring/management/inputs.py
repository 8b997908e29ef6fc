"""Checked option types (argparse ``type=``) for the management commands: a bad value is
refused with the option's name and our reason before anything is read or written."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from django.utils.translation import gettext as _

# PostgreSQL's bigint, and SQLite's integer: every id column and Telegram's ids.
MAX_BIGINT = 2**63 - 1


def integer(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        text = value.strip()
        # int() accepts "1_000" and thousands of digits; neither is what staff meant.
        digits = text[1:] if text[:1] in "+-" else text
        if not digits.isascii() or not digits.isdigit():
            raise argparse.ArgumentTypeError(
                _("%(value)r is not a whole number") % {"value": value[:40]}
            )
        number = int(text) if len(digits) <= 40 else None
        if number is None or not minimum <= number <= maximum:
            raise argparse.ArgumentTypeError(
                _("%(value)s is out of range (%(minimum)s to %(maximum)s)")
                % {"value": text[:40], "minimum": minimum, "maximum": maximum}
            )
        return number

    return parse


def column(model: Any, field: str) -> Callable[[str], str]:
    """Text that fits the model's column."""
    return text(model._meta.get_field(field).max_length)


database_id = integer(1, MAX_BIGINT)


def telegram_id(value: str) -> int:
    """Positive: group chats are negative, and an owner is a person."""
    try:
        return database_id(value)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            _("a Telegram user id is a positive 64-bit integer: %(reason)s") % {"reason": exc}
        ) from None


def text(max_length: int, *, what: str = "") -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not (cleaned := value.strip()):
            raise argparse.ArgumentTypeError(_("must not be empty"))
        if len(cleaned) > max_length:
            raise argparse.ArgumentTypeError(
                _("%(length)d characters, at most %(max)d allowed")
                % {"length": len(cleaned), "max": max_length}
            )
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in cleaned):
            raise argparse.ArgumentTypeError(_("must be one line without control characters"))
        return cleaned

    return parse
