"""The API's request and answer shapes (pydantic, through django-ninja), and what
``/api/v1/openapi.json`` says beyond the routes: each operation's own errors with examples,
the headers every answer carries, and the event callbacks (``webhooks``). Inputs forbid
unknown fields: a typo is a 422 naming the field, not a setting silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone
from ninja import NinjaAPI, Schema
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator
from standardwebhooks.webhooks import Webhook

from monitoring import storable
from monitoring.api.middleware import NOT_JSON_DETAIL, error_body
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


# --- What the document says beyond the routes (documentation only) ------------------------

# Not a secret of anyone's: the documented example's, for checking a receiver by hand.
EXAMPLE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EXAMPLE_WEBHOOK_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
REQUEST_ID = "X-Request-ID"


@dataclass(frozen=True)
class Err:
    status: int
    code: str
    when: str
    detail: str = ""  # the example's; "" when it says the same as ``when``
    fields: dict[str, str] | None = None


UNAUTHORIZED = Err(
    401,
    "unauthorized",
    "The bearer token is missing, unknown or revoked.",
    "A valid token is required: Authorization: Bearer <token>.",
)
RATE_LIMITED = Err(
    429,
    "rate_limited",
    "More calls this minute than the client's limit; wait `Retry-After` seconds.",
    "Too many calls; try again after Retry-After seconds.",
)
NOT_FOUND = Err(
    404,
    "not_found",
    "No avatar has this id, or it is not one of this client's (the same answer).",
    "No avatar with id 42.",
)
INVALID = Err(
    422,
    "invalid",
    "A field is invalid: `fields` names each one (body fields by their path, "
    "`query.x`, `path.x`, `header.X`).",
    "The request has invalid fields.",
    {"owner.telegram_id": "Input should be greater than 0"},
)
UNKNOWN_QUERY = Err(
    400,
    "unknown_parameters",
    "The query has a parameter this operation does not take (nothing is ignored).",
    "Unknown query parameter: state. This operation takes: owner_telegram_id, status, "
    "client_reference, cursor, limit.",
    {"query.state": "unknown parameter"},
)
NOT_JSON = Err(400, "bad_request", "The body is not JSON.", NOT_JSON_DETAIL)
TOO_LARGE = Err(413, "too_large", "The body is too large.", "The request body is too large.")


BODY_ERRORS = (NOT_JSON, TOO_LARGE, INVALID)


def access(scope: str) -> tuple[Err, ...]:
    """The errors of every operation whose token needs ``scope``."""
    lacks = Err(
        403,
        "insufficient_scope",
        f"The token lacks the `{scope}` scope.",
        f"This token lacks the {scope} scope.",
    )
    return UNAUTHORIZED, RATE_LIMITED, lacks, UNKNOWN_QUERY


def _header(description: str, example: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string", "examples": [example]}}


_REQUEST_ID_HEADER = _header(
    "This request's id: yours if you sent a sane one (1 to 128 letters, digits and "
    "`-_.:`), else ours. Quote it when asking about a call.",
    "3f2b8c1e9d4a4b7fa0c6e5d4c3b2a190",
)
_REPLAYED_HEADER = _header(
    "`true` when this is the stored answer to an earlier request with the same "
    "`Idempotency-Key` (nothing was started again); absent otherwise.",
    "true",
)
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": _header("Always `Bearer`.", "Bearer")},
    429: {"Retry-After": _header("Seconds to wait before calling again.", "17")},
}


def documented(
    ok: dict[int, type[BaseModel]],
    *errors: Err,
    ok_descriptions: dict[int, str] | None = None,
    idempotent: bool = False,
) -> dict[str, Any]:
    """``response`` and ``openapi_extra`` for an ``@api.get``/``@api.post``: this
    operation's errors, each code with when it happens and an example body."""
    response: dict[int, type[BaseModel]] = dict(ok)
    headers = {REQUEST_ID: _REQUEST_ID_HEADER}
    if idempotent:
        headers["Idempotent-Replayed"] = _REPLAYED_HEADER
    described: dict[int, Any] = {status: {"headers": dict(headers)} for status in ok}
    for status, text in (ok_descriptions or {}).items():
        described[status]["description"] = text
    by_status: dict[int, list[Err]] = {}
    for err in errors:
        by_status.setdefault(err.status, []).append(err)
    for status, errs in sorted(by_status.items()):
        response[status] = ErrorOut
        examples = {
            e.code: {"summary": e.when, "value": error_body(e.code, e.detail or e.when, e.fields)}
            for e in errs
        }
        described[status] = {
            "description": " ".join(f"`{e.code}`: {e.when}" for e in errs),
            "headers": {REQUEST_ID: _REQUEST_ID_HEADER, **_ERROR_HEADERS.get(status, {})},
            "content": {"application/json": {"examples": examples}},
        }
    return {"response": response, "openapi_extra": {"responses": described}}


# --- Event callbacks ------------------------------------------------------------------------

_EVENTS = {
    EventType.COMPLETED: "The avatar's training completed: `data.lora_url` and `data.files`.",
    EventType.FAILED: "The avatar's training failed: `data.error` and `data.error_type`.",
    EventType.CANCELLED: "The avatar's training was cancelled.",
    EventType.STUCK: "A training of the avatar was flagged stuck (sent only to a client "
    "created with `callback_stuck`): `data.stuck_reason`.",
    EventType.RETRIED: "An attempt failed on fal's side and a new one was started "
    "automatically; the avatar is still training (its attempts are in `data.trainings`).",
}


def callbacks_description() -> str:
    """The callbacks section of the document's description (settings as configured)."""
    return (
        "\n\n## Event callbacks\n\n"
        "A client with a callback URL is POSTed each outcome of the avatars it created, "
        "started or adopted (see `webhooks` in this document): "
        + ", ".join(f"`{name}`" for name in _EVENTS)
        + ". One event per outcome, whatever saw it first. The body is "
        '`{"type", "timestamp", "data"}`, `data` being the avatar as `GET /avatars/{id}` '
        "answers it at the time of the event.\n\n"
        "**Signature** ([Standard Webhooks](https://www.standardwebhooks.com/)): "
        "`webhook-id` (the same on every retry of an event: use it to drop duplicates), "
        "`webhook-timestamp` (Unix seconds of this attempt), `webhook-signature` "
        '(`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed with the base64 '
        "after `whsec_` of the client's callback secret). Verify before trusting a body, "
        "e.g. `Webhook(secret).verify(body, headers)` of the `standardwebhooks` package; "
        "the example in `webhooks` is signed with the example secret "
        f"`{EXAMPLE_SECRET}` when this document is served, so it verifies as it stands.\n\n"
        "**Retries**: answer 2xx within "
        f"{settings.EVENT_CALLBACK_TIMEOUT_SECONDS:g} s once the event is stored. Timeouts, "
        "connection errors, 5xx and 429 are retried with exponential backoff from "
        f"{settings.EVENT_CALLBACK_RETRY_BASE_SECONDS:g} s (doubling, at most "
        f"{settings.EVENT_CALLBACK_RETRY_MAX_SECONDS:g} s; a longer `Retry-After` wins) "
        f"until the event is {settings.EVENT_CALLBACK_MAX_AGE_HOURS} h old. Any other 4xx "
        "(410 to say stop) and any redirect (never followed) is final. Staff can send an "
        "event again, with the same `webhook-id`."
    )


def webhooks(schema_ref: str) -> dict[str, Any]:
    """The OpenAPI 3.1 ``webhooks`` object: one entry per event type; the completed one's
    example signed now with the example secret, as a callback is sent."""
    now = timezone.now()
    payload = {
        "type": str(EventType.COMPLETED),
        "timestamp": now.isoformat(),
        "data": AVATAR_EXAMPLE,
    }
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    headers = {
        "content-type": "application/json",
        "webhook-id": EXAMPLE_WEBHOOK_ID,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(EXAMPLE_SECRET).sign(EXAMPLE_WEBHOOK_ID, now, body),
    }
    parameters = [
        {"name": name, "in": "header", "required": True, **_header(text, headers[name])}
        for name, text in (
            ("webhook-id", "The event's id: the same on every retry."),
            ("webhook-timestamp", "Unix seconds of this attempt."),
            ("webhook-signature", "`v1,<base64 signature>` (Standard Webhooks)."),
        )
    ]
    hooks: dict[str, Any] = {}
    for name, text in _EVENTS.items():
        content: dict[str, Any] = {"schema": {"$ref": schema_ref}}
        if name == EventType.COMPLETED:
            summary = f"Signed with the example secret {EXAMPLE_SECRET}; headers: "
            content["examples"] = {
                "signed": {"summary": summary + json.dumps(headers), "value": payload}
            }
        operation = {
            "summary": name,
            "description": text,
            "parameters": parameters,
            "requestBody": {"required": True, "content": {"application/json": content}},
            "responses": {
                "2XX": {"description": "Delivered: not sent again."},
                "429": {"description": "Retried (after `Retry-After` if longer)."},
                "5XX": {"description": "Retried with backoff."},
                "4XX": {"description": "Final: not retried (410 to say stop)."},
            },
        }
        hooks[name] = {"post": operation}
    return hooks


class DocumentedApi(NinjaAPI):
    """The API whose document also has the event callbacks (``webhooks``, OpenAPI 3.1)."""

    def get_openapi_schema(self, **kwargs: Any) -> Any:
        schema = super().get_openapi_schema(**kwargs)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        event = EventOut.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="serialization"
        )
        components.update(event.pop("$defs", {}))
        components["Event"] = event
        schema["webhooks"] = webhooks("#/components/schemas/Event")
        return schema
