"""Whether a value typed by a person or a program can be stored at all: NUL characters,
unpaired surrogates, NaN and infinities fail in the database."""

from __future__ import annotations

import math
import re
from typing import Any

from django.utils.translation import gettext as _

_REFUSED_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
MAX_DEPTH = 20


def unstorable(value: Any, *, _depth: int = 0) -> str:
    """Why ``value`` (text, or JSON-like dicts, lists and numbers) cannot be stored, or ""."""
    if isinstance(value, str):
        found = _REFUSED_CHARACTERS.search(value)
        if found is None:
            return ""
        if found.group() == "\x00":
            return _("must not contain the NUL character (U+0000)")
        return _("must be valid text (it holds bytes that are not UTF-8)")
    if isinstance(value, float):
        return "" if math.isfinite(value) else _("must be a finite number, not NaN or infinity")
    if isinstance(value, dict | list | tuple):
        if _depth >= MAX_DEPTH:
            return _("is nested more than %(depth)s levels deep") % {"depth": MAX_DEPTH}
        for item in [*value.keys(), *value.values()] if isinstance(value, dict) else value:
            if reason := unstorable(item, _depth=_depth + 1):
                return reason
    return ""


def stored_as_received(text: str) -> str:
    """``text`` with what the database refuses shown as U+FFFD: for records of what was
    received (a request's path), which must be kept whatever it held."""
    return _REFUSED_CHARACTERS.sub("\ufffd", text)
