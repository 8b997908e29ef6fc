"""The API's request and answer shapes (pydantic, through django-ninja).

Inputs forbid unknown fields, so a typo is a 422 naming the field rather than a
setting silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from ninja import Schema
from pydantic import ConfigDict, Field, field_validator

from monitoring import storable

MAX_TELEGRAM_ID = 2**63 - 1


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
    telegram_id: int = Field(gt=0, le=MAX_TELEGRAM_ID, description="The owner's Telegram user id.")
    username: str = Field("", max_length=64, pattern=r"^@?[A-Za-z0-9_]*$")
    language: Literal["ru", "en"] | None = None

    @field_validator("username")
    @classmethod
    def _without_at(cls, value: str) -> str:
        return value.lstrip("@")


class TrainingIn(_Input):
    owner: OwnerIn
    name: str = Field(min_length=1, max_length=128)
    images_url: str = Field(max_length=2048, description="http(s) URL of a zip of the photos.")
    training_type: Literal["portrait", "style"]
    trigger: str = Field(min_length=1, max_length=128)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Extra trainer inputs, e.g. steps."
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


class EtaOut(Schema):
    """When an active training should be ready (docs/eta.md); null when nothing is known."""

    at: str | None = Field(description="The point estimate (ISO time); null when late.")
    low: str | None = Field(description="The range's early end (20th percentile).")
    high: str | None = Field(description="The range's late end (80th percentile).")
    late: bool = Field(description="Taking longer than usual: no time is promised.")


class TrainingOut(Schema):
    id: str
    attempt: int
    endpoint: str
    submit: Literal["accepted", "refused", "unknown"]
    submit_error: SubmitError | None
    fal_request_id: str | None
    fal_status: str
    queue_position: int | None
    eta: EtaOut | None
    outcome: str | None
    lora_url: str = Field(description="fal's URL: fal deletes the file after a while.")
    config_url: str = Field(description="fal's URL: fal deletes the file after a while.")
    files: FilesOut | None = Field(description="Our kept copies (completed trainings only).")
    error: str
    error_type: str
    stuck: bool
    cancel_requested_at: str | None
    created_at: str | None
    submitted_at: str | None
    finished_at: str | None


class AvatarOut(Schema):
    id: str
    name: str
    status: str
    training_type: str
    fal_status: str | None
    fal_request_id: str | None
    queue_position: int | None
    eta: EtaOut | None = Field(description="Of the current training, while it is active.")
    lora_url: str = Field(description="fal's URL: fal deletes the file after a while.")
    config_url: str = Field(description="fal's URL: fal deletes the file after a while.")
    files: FilesOut | None = Field(description="Our kept copies (completed trainings only).")
    error: str
    error_type: str
    stuck: bool
    stuck_reason: str
    owner_telegram_id: str
    created_at: str | None
    finished_at: str | None
    trainings: list[TrainingOut]


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


class ErrorOut(Schema):
    error: str
    detail: str
    fields: dict[str, str] | None = None
