"""The API's request and answer shapes (pydantic, through django-ninja). Inputs forbid
unknown fields: a typo is a 422 naming the field, not a setting silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from ninja import Schema
from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from monitoring import storable
from monitoring.api.models import EventType
from monitoring.models import AvatarStatus, TrainingOutcome, TrainingType

MAX_TELEGRAM_ID = 2**63 - 1
ID_NOTE = "Taken as a number or a string of digits; always returned as a string."


def _digits_to_int(value: Any) -> Any:
    # A number, or a string of ASCII digits: never a bool, a float or "1e3".
    digits = isinstance(value, str) and value.isascii() and value.isdigit()
    if isinstance(value, bool | float) or (isinstance(value, str) and not digits):
        raise ValueError("must be an integer or a string of digits")
    return int(value) if digits else value


IdIn = Annotated[
    int,
    BeforeValidator(_digits_to_int),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_TELEGRAM_ID},
                {"type": "string", "pattern": "^[0-9]{1,19}$"},
            ],
            "description": ID_NOTE,
            "examples": ["555000111", 555000111],
        }
    ),
]
IdOut = Annotated[str, Field(pattern="^[0-9]+$", examples=["42"])]


class _Input(Schema):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        # Every field, settings keys and values included: a 422 naming it, not a 500
        # from the database (monitoring.storable).
        reason = storable.unstorable(value)
        if reason:
            raise ValueError(reason)
        return value


class OwnerIn(_Input):
    telegram_id: IdIn = Field(gt=0, le=MAX_TELEGRAM_ID, description="The owner's Telegram user id.")
    username: str = Field(
        "",
        max_length=64,
        pattern=r"^@?[A-Za-z0-9_]*$",
        description="Telegram username, with or without @ (kept without it).",
    )
    language: Literal["ru", "en"] | None = Field(
        None, description="The language of the owner's messages; kept when left out."
    )

    @field_validator("username")
    @classmethod
    def _without_at(cls, value: str) -> str:
        return value.lstrip("@")


class TrainingIn(_Input):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "owner": {"telegram_id": 123456789, "username": "anna", "language": "ru"},
                    "name": "Anna portrait",
                    "images_url": "https://files.example.com/anna.zip",
                    "training_type": "portrait",
                    "trigger": "ohwx woman",
                    "settings": {"steps": 1000},
                    "client_reference": "order-1187",
                }
            ]
        },
    )

    owner: OwnerIn
    name: str = Field(min_length=1, max_length=128)
    images_url: str = Field(max_length=2048, description="http(s) URL of a zip of the photos.")
    training_type: Literal["portrait", "style"]
    trigger: str = Field(min_length=1, max_length=128)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Extra trainer inputs, e.g. steps."
    )
    client_reference: str = Field(
        "",
        max_length=255,
        description="Your own id for the avatar (an order number, say): returned as sent, "
        "in answers and events, and a filter of GET /avatars. Not interpreted.",
    )

    @field_validator("name", "trigger")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("images_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("settings")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > 50:
            raise ValueError("at most 50 settings")
        return value


class AdoptIn(_Input):
    request_id: str = Field(min_length=1, max_length=128)
    endpoint: str = Field(min_length=1, max_length=128)
    owner: OwnerIn
    name: str = Field("", max_length=128)
    training_type: Literal["portrait", "style"] | None = None
    notify: bool = False
    client_reference: str = Field("", max_length=255, description="As in POST /trainings.")


class SubmitError(Schema):
    type: str
    message: str


class KeptFileOut(Schema):
    url: str | None = Field(
        description="Our copy: a presigned S3 URL or a signed link, expiring "
        "(AVATAR_FILE_URL_MAX_AGE_SECONDS); fal can fetch it. Null in stored event bodies."
    )
    sha256: str
    size: int


class FilesOut(Schema):
    state: Literal["pending", "kept", "failed"]
    lora: KeptFileOut | None
    config: KeptFileOut | None
    error: str


class CostOut(Schema):
    usd: str = Field(description="What fal billed, in USD with six decimals (exact).")
    units: int | float | None = Field(description="The units fal billed (e.g. steps).")
    unit_price: str | None = Field(description="fal's price of one unit, in USD.")


FAL_STATUS_NOTE = (
    "What the attempt is doing on fal while it is active (SUBMITTING, NOT_SENT, IN_QUEUE, "
    "IN_PROGRESS). Once it has ended: COMPLETED when fal reported the job finished, else "
    "null; the outcome says how it ended."
)


FalUrl = Annotated[str, Field(description="fal's URL: fal deletes the file after a while.")]


class EtaOut(Schema):
    """When an active training should be ready (docs/eta.md); null when nothing is known."""

    at: str | None = Field(description="The point estimate (ISO time); null when late.")
    low: str | None = Field(description="The range's early end (20th percentile).")
    high: str | None = Field(description="The range's late end (80th percentile).")
    late: bool = Field(description="Taking longer than usual: no time is promised.")


class _ResultOut(Schema):
    """What an attempt left, on an attempt and (the current one's) on its avatar."""

    lora_url: FalUrl
    config_url: FalUrl
    files: FilesOut | None = Field(description="Our kept copies (completed trainings only).")
    error: str
    error_type: str
    stuck: bool


class TrainingOut(_ResultOut):
    id: IdOut
    attempt: int
    endpoint: str
    submit: Literal["accepted", "refused", "held", "unknown"] = Field(
        description="held: waiting for fal's balance, nothing sent yet (see held_reason)."
    )
    submit_error: SubmitError | None
    fal_request_id: str | None
    fal_status: str | None = Field(description=FAL_STATUS_NOTE)
    queue_position: int | None
    eta: EtaOut | None
    outcome: Literal[tuple(TrainingOutcome.values)] | None  # type: ignore[valid-type]
    held_reason: Literal["balance_low", "account_locked"] | None
    cost: CostOut | None = Field(description="What fal billed; null while not known yet.")
    cancel_requested_at: str | None
    created_at: str | None
    submitted_at: str | None
    finished_at: str | None


# The example in the document (GET answers and event bodies); a test validates it.
_FILES_EXAMPLE: dict[str, Any] = {
    "state": "kept",
    "lora": {
        "url": "https://monitor.example.com/files/eyJ.../pytorch_lora_weights.safetensors",
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "size": 180123456,
    },
    "config": None,
    "error": "",
}
_RESULT_EXAMPLE: dict[str, Any] = {
    "lora_url": "https://v3.fal.media/files/lion/pytorch_lora_weights.safetensors",
    "config_url": "https://v3.fal.media/files/lion/config.json",
    "files": _FILES_EXAMPLE,
    "error": "",
    "error_type": "",
    "stuck": False,
}
AVATAR_EXAMPLE: dict[str, Any] = {
    "id": "42",
    "name": "Anna portrait",
    "status": "completed",
    "training_type": "portrait",
    "trigger": "ohwx woman",
    "images_url": "https://files.example.com/anna.zip",
    "settings": {"steps": 1000},
    "client_reference": "order-1187",
    "owner": {"telegram_id": "123456789", "username": "anna", "language": "ru"},
    "fal_status": "COMPLETED",
    "fal_request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b",
    "queue_position": None,
    **_RESULT_EXAMPLE,
    "stuck_reason": "",
    "owner_telegram_id": "123456789",
    "created_at": "2026-12-01T20:20:03.512340+00:00",
    "finished_at": "2026-12-01T20:41:15.123456+00:00",
    "cost_usd": "2.400000",
    "eta": None,
    "trainings": [
        {
            "id": "57",
            "attempt": 1,
            "endpoint": "fal-ai/flux-lora-portrait-trainer",
            "submit": "accepted",
            "submit_error": None,
            "fal_request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b",
            "fal_status": "COMPLETED",
            "queue_position": None,
            "outcome": "completed",
            **_RESULT_EXAMPLE,
            "cancel_requested_at": None,
            "created_at": "2026-12-01T20:20:03.601200+00:00",
            "submitted_at": "2026-12-01T20:20:04.020100+00:00",
            "finished_at": "2026-12-01T20:41:15.123456+00:00",
            "held_reason": None,
            "cost": {"usd": "2.400000", "units": 1000, "unit_price": "0.0024"},
            "eta": None,
        }
    ],
}


class OwnerOut(Schema):
    telegram_id: IdOut = Field(description="As sent in owner.telegram_id, as a string.")
    username: str = Field(description="Without @; empty when never sent.")
    language: Literal["ru", "en"]


class AvatarOut(_ResultOut):
    model_config = ConfigDict(json_schema_extra={"examples": [AVATAR_EXAMPLE]})

    id: IdOut
    name: str
    status: Literal[tuple(AvatarStatus.values)]  # type: ignore[valid-type]
    training_type: Literal[tuple(TrainingType.values)]  # type: ignore[valid-type]
    trigger: str = Field(description="As sent.")
    images_url: str = Field(description="As sent.")
    settings: dict[str, Any] = Field(description="As sent.")
    client_reference: str | None = Field(description="As sent; null when none was.")
    owner: OwnerOut
    fal_status: str | None = Field(description="The current attempt's. " + FAL_STATUS_NOTE)
    fal_request_id: str | None
    queue_position: int | None
    eta: EtaOut | None = Field(description="Of the current training, while it is active.")
    stuck_reason: str
    owner_telegram_id: IdOut = Field(
        deprecated=True, description="Use owner.telegram_id: the same value."
    )
    created_at: str | None
    finished_at: str | None
    cost_usd: str | None = Field(description="What all attempts cost together (known ones).")
    trainings: list[TrainingOut]


class EventOut(Schema):
    """The body of an event callback."""

    type: Literal[tuple(EventType.values)]  # type: ignore[valid-type]
    timestamp: str = Field(description="When the event happened (ISO 8601).")
    data: AvatarOut = Field(description="The avatar as GET /avatars/{id} answered then.")


class StartOut(Schema):
    avatar: AvatarOut
    training: TrainingOut


class AdoptOut(StartOut):
    adopted: bool


class AvatarPage(Schema):
    items: list[AvatarOut]
    next_cursor: str | None


class CancelOut(Schema):
    cancel: Literal["requested", "cancelled"]
    avatar: AvatarOut


class QuoteOut(Schema):
    usd: str
    unit: str
    unit_price: str
    quantity: int
    endpoint: str


class ErrorOut(Schema):
    error: str
    detail: str
    fields: dict[str, str] | None = None
