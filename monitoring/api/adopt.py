"""``POST /api/v1/trainings/adopt``: take over a fal request started elsewhere.

Idempotent on the request id through ``monitoring.trainings.adopt_training`` (201 with
``"adopted": true`` the first time, 200 with ``false`` when it was already known). The
route is registered only when that service function exists, so the rest of the API
works without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from ninja import NinjaAPI, Status

from monitoring import trainings
from monitoring.api import representation
from monitoring.api.errors import ApiError
from monitoring.api.openapi import Err, documented
from monitoring.api.schemas import AdoptIn, AdoptOut
from monitoring.models import EventSource, Owner


def available() -> bool:
    return hasattr(trainings, "adopt_training")


def register(
    api: NinjaAPI,
    auth: Any,
    *,
    start_answer: Callable[..., tuple[int, dict[str, Any]]],
    link: Callable[..., None],
    errors: tuple[Err, ...] = (),
) -> bool:
    if not available():
        return False

    @api.post(
        "/trainings/adopt",
        auth=auth,
        summary="Adopt a fal request started elsewhere (idempotent on the request id)",
        **documented(
            {200: AdoptOut, 201: AdoptOut},
            *errors,
            Err(
                404,
                "not_found",
                "The request is followed already, for another client or for staff.",
                "No avatar of this client follows this request.",
            ),
            Err(
                422,
                "adopt_refused",
                "fal does not know the request, or it is not a training of a known "
                "trainer: `fields.request_id` says why.",
                "fal has no request 764cabcf-b745-4b3e-ae38-1200304cf45b on this endpoint.",
                {"request_id": "fal has no such request"},
            ),
            ok_descriptions={
                201: "Adopted now (`adopted: true`).",
                200: "Followed already by this client (`adopted: false`).",
            },
        ),
    )
    def adopt_training(request: HttpRequest, payload: AdoptIn):
        refused = getattr(trainings, "AdoptRefused", ValueError)
        try:
            result = trainings.adopt_training(
                request_id=payload.request_id,
                endpoint=payload.endpoint,
                owner_telegram_id=payload.owner.telegram_id,
                name=payload.name,
                training_type=payload.training_type,
                owner_language=payload.owner.language,
                notify=payload.notify,
                source=EventSource.API,
            )
        except refused as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise ApiError(
                422, "adopt_refused", str(reason), fields={"request_id": str(reason)}
            ) from None
        avatar = result.avatar
        if not result.adopted and representation.load_avatar(avatar.pk, request.auth) is None:  # type: ignore[attr-defined]
            # Followed already, for another client or for staff: not this client's to see.
            raise ApiError(404, "not_found", "No avatar of this client follows this request.")
        if payload.owner.username:
            Owner.objects.filter(pk=avatar.owner_id).exclude(
                username=payload.owner.username
            ).update(username=payload.owner.username)
        link(avatar, request.auth, payload.client_reference)  # type: ignore[attr-defined]
        _status, body = start_answer(avatar.pk, result.training)
        return Status(201 if result.adopted else 200, {**body, "adopted": result.adopted})

    return True
