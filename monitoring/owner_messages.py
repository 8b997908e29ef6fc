"""What an owner is told about a failed training, from what fal actually returned.

A reviewed table of fal's machine-readable fields, never its words; anything else is
``unknown``. Add a row (and a test) when fal returns a new shape.
See docs/owner-messages.md#how-the-failure-message-is-picked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from notifications.models import OwnerMessage

PHOTOS = OwnerMessage.PHOTOS
TECHNICAL = OwnerMessage.TECHNICAL
CANCELLED = OwnerMessage.CANCELLED
UNKNOWN = OwnerMessage.UNKNOWN

# Problems with the owner's photos (as error_type or detail[].type): the owner's to fix.
PHOTO_PROBLEMS: dict[str, str] = {
    code: PHOTOS
    for code in (
        "image_load_error",
        "image_too_small",
        "image_too_large",
        "file_download_error",
        "face_detection_error",
        "file_too_large",
        "invalid_archive",
        "archive_file_count_below_minimum",
        "archive_file_count_exceeds_maximum",
        "unsupported_image_format",
        "content_policy_violation",
    )
}

# Model error codes of the platform's side (fal's model-errors page).
_MODEL_PLATFORM = (
    "internal_server_error",
    "generation_timeout",
    "downstream_service_error",
    "downstream_service_unavailable",
)
# fal's own infrastructure (its request-errors table, and the model codes of the
# platform's side): retried automatically (``failure_kinds``), never the photos.
FALS_OWN: frozenset[str] = frozenset(
    {
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
        "internal_error",
        "internal_server_error",
        "downstream_service_unavailable",
    }
)

# error_type → owner message.
ERROR_TYPES: dict[str, str] = {
    # fal request errors: the platform failed, not the photos.
    **dict.fromkeys(FALS_OWN, TECHNICAL),
    "request_timeout": TECHNICAL,
    "bad_request": TECHNICAL,  # our request was malformed
    # The job was cancelled on fal (by us, or from fal's dashboard).
    "client_cancelled": CANCELLED,
    "client_disconnected": TECHNICAL,
    "request_cancelled": CANCELLED,  # the emulator's code for a cancelled job
    # Model errors that trainers put into error_type as well (the emulator does).
    **PHOTO_PROBLEMS,
    "face_error": PHOTOS,
    **dict.fromkeys(_MODEL_PLATFORM, TECHNICAL),
    # Our own codes (monitoring.status_checks, monitoring.fal.client).
    "not_found": TECHNICAL,  # fal lost the request
    "no_lora_in_result": TECHNICAL,  # fal finished without a LoRA file
    **dict.fromkeys(("http_500", "http_502", "http_503", "http_504"), TECHNICAL),
}

# detail[].type of a model (validation) error → owner message; constraint errors on
# our own inputs (steps, learning rate, trigger) are ours.
DETAIL_TYPES: dict[str, str] = {
    **PHOTO_PROBLEMS,
    # A generic validation error on the job's input: the input that varies between jobs
    # is the owner's photo archive (the emulator's failed webhook and result 422 use it).
    "value_error": PHOTOS,
    "greater_than": TECHNICAL,
    "greater_than_equal": TECHNICAL,
    "less_than": TECHNICAL,
    "less_than_equal": TECHNICAL,
    "multiple_of": TECHNICAL,
    "one_of": TECHNICAL,
    "sequence_too_short": TECHNICAL,
    "sequence_too_long": TECHNICAL,
    "feature_not_supported": TECHNICAL,
    "missing": TECHNICAL,
    "value_error.missing": TECHNICAL,
    "type_error": TECHNICAL,
    **dict.fromkeys(_MODEL_PLATFORM, TECHNICAL),
}

# Photos beat technical when a model error lists both: the owner can act on it.
_PRECEDENCE = (CANCELLED, PHOTOS, TECHNICAL)


def detail_types(payload: Any) -> list[str]:
    """The ``type`` of each entry of a model error's ``detail`` list (``[]`` otherwise)."""
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    if not isinstance(detail, list):
        return []
    types = [str(item["type"]) for item in detail if isinstance(item, dict) and item.get("type")]
    return types[:20]


def owner_message_for(
    *, error_type: str = "", detail_type_list: Iterable[str] = (), http_status: int | None = None
) -> str:
    if (by_type := ERROR_TYPES.get((error_type or "").strip().lower())) is not None:
        return by_type
    by_detail = {DETAIL_TYPES.get(t.strip().lower()) for t in detail_type_list}
    for kind in _PRECEDENCE:
        if kind in by_detail:
            return kind
    if http_status == 422:
        return PHOTOS
    if http_status is not None and http_status >= 500:
        return TECHNICAL
    return UNKNOWN
