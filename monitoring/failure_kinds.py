"""Whose failure was it? fal's own (retried for the owner), the owner's, or unknown (never
retried), from fal's machine-readable fields: docs/fal.md#retries-and-deadlines-self-healing.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from monitoring.owner_messages import FALS_OWN, PHOTO_PROBLEMS


class Blame(StrEnum):
    FAL = "fal"  # fal's infrastructure: retried automatically, never billed
    OWNER = "owner"  # the input: the owner's to fix, never retried
    UNKNOWN = "unknown"  # treated as the owner's


# Ours or the caller's: the same request would fail again.
NOT_RETRIED: frozenset[str] = frozenset(
    {"bad_request", "client_disconnected", "client_cancelled", "request_cancelled"}
)
# Codes of the owner's input (a 422 of the trainer): their photos, content, input.
OWNERS: frozenset[str] = frozenset(
    {*PHOTO_PROBLEMS, "face_error", "value_error", "content_policy_violation"}
)
SERVER_ERRORS = frozenset({"http_500", "http_502", "http_503", "http_504"})


def blame(
    *,
    error_type: str = "",
    detail_types: Iterable[str] = (),
    http_status: int | None = None,
    start_deadline_sent: bool = False,
) -> Blame:
    """``request_timeout`` is fal's only when the attempt carried our start deadline (fal
    then answers 504 for a job it never started in time)."""
    code = (error_type or "").strip().lower()
    types = {t.strip().lower() for t in detail_types}
    if code in NOT_RETRIED:
        return Blame.UNKNOWN
    if code in OWNERS or types & OWNERS or http_status == 422:
        return Blame.OWNER
    if code == "request_timeout":
        return Blame.FAL if start_deadline_sent else Blame.UNKNOWN
    if code in FALS_OWN:
        return Blame.FAL
    if not types and ((http_status or 0) >= 500 or code in SERVER_ERRORS):
        return Blame.FAL
    return Blame.UNKNOWN
