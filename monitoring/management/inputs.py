"""Checked option types for the management commands: ranges and lengths, before anything runs.

Used as argparse ``type=`` callables. A bad value is refused by argparse with the
option's name and our reason: ``CommandError`` from ``call_command``, exit code 2 on
the command line, nothing read or written. Limits come from the database columns,
so a value that passes always fits.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from django.utils.translation import gettext as _

# PostgreSQL's bigint, and SQLite's integer: every id column and Telegram's ids.
MAX_BIGINT = 2**63 - 1


def integer(minimum: int, maximum: int) -> Callable[[str], int]:
    """A whole number within [minimum, maximum]."""

    def parse(value: str) -> int:
        text = value.strip()
        # int() accepts "1_000" and thousands of digits; neither is what staff meant.
        digits = text[1:] if text[:1] in "+-" else text
        if not digits.isascii() or not digits.isdigit():
            raise argparse.ArgumentTypeError(
                _("%(value)r is not a whole number") % {"value": value[:40]}
            )
        # Thousands of digits are out of any range; no need to build the number.
        number = int(text) if len(digits) <= 40 else None
        if number is None or not minimum <= number <= maximum:
            raise argparse.ArgumentTypeError(
                _("%(value)s is out of range (%(minimum)s to %(maximum)s)")
                % {"value": text[:40], "minimum": minimum, "maximum": maximum}
            )
        return number

    return parse


def database_id(value: str) -> int:
    """A row id: a positive 64-bit integer."""
    return integer(1, MAX_BIGINT)(value)


def telegram_id(value: str) -> int:
    """An owner's Telegram user id: a positive 64-bit integer (group chats are negative,
    and an owner is a person)."""
    try:
        return integer(1, MAX_BIGINT)(value)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            _("a Telegram user id is a positive 64-bit integer: %(reason)s") % {"reason": exc}
        ) from None


def text(max_length: int, *, what: str = "") -> Callable[[str], str]:
    """A non-empty one-line text of at most ``max_length`` characters (surrounding blanks
    removed)."""

    def parse(value: str) -> str:
        cleaned = value.strip()
        if not cleaned:
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
