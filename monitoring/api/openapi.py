"""What ``/api/v1/openapi.json`` says beyond the routes: each operation's own errors with
examples, the headers every answer carries, and the event callbacks (``webhooks``). Only
documentation: the behaviour lives in ``errors``, ``idempotency``, ``middleware``, ``callbacks``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils import timezone
from ninja import NinjaAPI
from pydantic import BaseModel
from standardwebhooks.webhooks import Webhook

from monitoring.api.errors import NOT_JSON_DETAIL, error_body
from monitoring.api.models import EventType
from monitoring.api.schemas import AVATAR_EXAMPLE, ErrorOut, EventOut

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
