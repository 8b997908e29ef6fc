"""Whether a value typed by a person or a program can be stored at all.

PostgreSQL refuses the NUL character in text and in JSON, no database driver can encode
an unpaired surrogate (Python's stand-in for bytes that are not UTF-8, as a command line
may hand us), and PostgreSQL's jsonb, like fal, refuses NaN and the infinity an
overflowing JSON number becomes. The API (``monitoring.api.schemas``) and the commands
(``monitoring.management.language``) ask ``unstorable`` first, so such input is refused
naming the field instead of failing in the database.
"""

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
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)
        for item in items:
            reason = unstorable(item, _depth=_depth + 1)
            if reason:
                return reason
    return ""


def stored_as_received(text: str) -> str:
    """``text`` with what the database refuses shown as U+FFFD: for records of what was
    received (a request's path), which must be kept whatever it held."""
    return _REFUSED_CHARACTERS.sub("\ufffd", text)
