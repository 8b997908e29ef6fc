"""``/api/v1/``: thin views over the same service functions as the admin and the commands.

Each view translates HTTP into a call of ``monitoring.trainings`` (start, cancel) or
``monitoring.transitions`` (mark ready, retrain) and the answer back; the rules live
there. Authentication, scope and rate limit run before the body is validated
(``auth.ClientToken``); every error has the shape of ``errors.error_body``.
"""

from __future__ import annotations

from typing import Any, Literal

from django.db import transaction
from django.http import HttpRequest
from ninja import Header, NinjaAPI, Query, Schema, Status
from pydantic import Field

from monitoring import transitions
from monitoring.api import adopt, errors, idempotency, representation
from monitoring.api.auth import ClientToken
from monitoring.api.errors import ApiError
from monitoring.api.models import ApiClient, ClientAvatar, IdempotencyKey, Scope
from monitoring.api.schemas import (
    AvatarOut,
    AvatarPage,
    CancelOut,
    ErrorOut,
    StartOut,
    TrainingIn,
)
from monitoring.models import Avatar, AvatarStatus, EventSource, Training, TrainingOutcome
from monitoring.trainings import cancel_training, create_avatar_for_owner, start_training

API_SOURCE = EventSource.API
WRITE = ClientToken(Scope.TRAININGS_WRITE)
READ = ClientToken(Scope.AVATARS_READ)
_ERRORS = frozenset({400, 401, 403, 404, 409, 422, 429})

api = NinjaAPI(
    title="Avatar training monitor",
    version="1",
    description=(
        "Start and follow avatar trainings. Authenticate with `Authorization: Bearer <token>`; "
        "POSTs that start a training need an `Idempotency-Key` header."
    ),
    urls_namespace="api-v1",
)
errors.install(api)


def _avatar_or_404(avatar_id: int, client: ApiClient | None = None) -> Avatar:
    """The avatar; with ``client``, only one it may see (another client's is a 404 too)."""
    avatar = representation.load_avatar(avatar_id, client)
    if avatar is None:
        raise ApiError(404, "not_found", f"No avatar with id {avatar_id}.")
    return avatar


def start_answer(avatar_id: int, training: Training | None) -> idempotency.Answer:
    """201 with the avatar and the attempt just started (as the database holds them)."""
    avatar = _avatar_or_404(avatar_id)
    trainings = list(Training.objects.filter(avatar_id=avatar_id).order_by("attempt"))
    chosen = next((t for t in trainings if training and t.pk == training.pk), None)
    chosen = chosen or (trainings[-1] if trainings else None)
    if chosen is None:
        raise ApiError(409, "not_started", "The avatar has no training attempt.")
    return 201, {
        "avatar": representation.avatar_data(avatar, trainings),
        "training": representation.training_data(chosen),
    }


def _recover(row: IdempotencyKey) -> idempotency.Answer | None:
    assert row.avatar_id is not None
    last = Training.objects.filter(avatar_id=row.avatar_id).order_by("-attempt").first()
    return start_answer(row.avatar_id, last) if last else None


def _link(avatar: Avatar, client: ApiClient) -> None:
    """The client that created or started an avatar gets its events (the first one keeps it)."""
    ClientAvatar.objects.get_or_create(avatar=avatar, defaults={"client": client})


def _started(avatar: Avatar) -> idempotency.Answer:
    outcome = start_training(avatar, source=API_SOURCE)
    if outcome.training is None:
        raise ApiError(
            409, "not_startable", f"The avatar was not started: {outcome.detail or outcome.status}."
        )
    return start_answer(avatar.pk, outcome.training)


@api.post(
    "/trainings",
    auth=WRITE,
    response={201: StartOut, _ERRORS: ErrorOut},
    summary="Create the owner if needed and a new avatar, and start its training",
)
def create_training(
    request: HttpRequest,
    payload: TrainingIn,
    idempotency_key: str = Header(..., alias="Idempotency-Key"),
):
    client: ApiClient = request.auth  # type: ignore[attr-defined]

    def perform(row: IdempotencyKey) -> idempotency.Answer:
        with transaction.atomic():
            avatar = create_avatar_for_owner(
                owner_telegram_id=payload.owner.telegram_id,
                owner_username=payload.owner.username,
                owner_language=payload.owner.language,
                name=payload.name,
                training_type=payload.training_type,
                trigger_word=payload.trigger,
                images_url=payload.images_url,
                training_settings=payload.settings,
                source=API_SOURCE,
            )
            _link(avatar, client)
            # Noted with the avatar, so that an answer can be rebuilt whatever happens next.
            IdempotencyKey.objects.filter(pk=row.pk).update(avatar=avatar)
        return _started(avatar)

    digest = idempotency.request_hash("POST", "/trainings", payload.model_dump(mode="json"))
    return Status(
        *idempotency.run_once(
            client=client, key=idempotency_key, digest=digest, perform=perform, recover=_recover
        )
    )


@api.post(
    "/avatars/{avatar_id}/trainings",
    auth=WRITE,
    response={201: StartOut, _ERRORS: ErrorOut},
    summary="Start an existing avatar, or retrain a failed or cancelled one",
)
def start_avatar(
    request: HttpRequest,
    avatar_id: int,
    idempotency_key: str = Header(..., alias="Idempotency-Key"),
):
    client: ApiClient = request.auth  # type: ignore[attr-defined]

    def perform(row: IdempotencyKey) -> idempotency.Answer:
        avatar = _avatar_or_404(avatar_id, client)
        if avatar.status == AvatarStatus.DRAFT:
            transitions.mark_ready(avatar, source=API_SOURCE)
        elif avatar.status in transitions.RETRAINABLE:
            transitions.retrain(avatar, source=API_SOURCE)
        if avatar.status == AvatarStatus.TRAINING:
            raise ApiError(409, "already_training", "The avatar is training already.")
        if avatar.status != AvatarStatus.READY_FOR_TRAINING:
            raise ApiError(
                409,
                "not_startable",
                f"The avatar is {avatar.status}: only draft, ready_for_training, error and "
                "cancelled avatars start.",
            )
        IdempotencyKey.objects.filter(pk=row.pk).update(avatar=avatar)
        _link(avatar, client)
        return _started(avatar)

    digest = idempotency.request_hash("POST", f"/avatars/{avatar_id}/trainings", None)
    return Status(
        *idempotency.run_once(
            client=client, key=idempotency_key, digest=digest, perform=perform, recover=_recover
        )
    )


@api.get(
    "/avatars/{avatar_id}",
    auth=READ,
    response={200: AvatarOut, _ERRORS: ErrorOut},
    summary="An avatar with its attempts",
)
def get_avatar(request: HttpRequest, avatar_id: int):
    return representation.avatar_data(_avatar_or_404(avatar_id, request.auth))  # type: ignore[attr-defined]


class AvatarFilters(Schema):
    owner_telegram_id: int | None = Field(None, gt=0)
    status: Literal[tuple(AvatarStatus.values)] | None = None  # type: ignore[valid-type]
    cursor: str | None = Field(None, pattern=r"^[0-9]{1,19}$")
    limit: int = Field(50, ge=1, le=200)


@api.get(
    "/avatars",
    auth=READ,
    response={200: AvatarPage, _ERRORS: ErrorOut},
    summary="Avatars, newest first, by owner and status; pass next_cursor to go on",
)
def list_avatars(request: HttpRequest, filters: Query[AvatarFilters]):
    client: ApiClient = request.auth  # type: ignore[attr-defined]
    avatars = (
        Avatar.objects.filter(client.avatar_filter())
        .select_related("owner", "current_training")
        .prefetch_related("trainings__kept_files")
        .order_by("-pk")
    )
    if filters.owner_telegram_id is not None:
        avatars = avatars.filter(owner__telegram_id=filters.owner_telegram_id)
    if filters.status:
        avatars = avatars.filter(status=filters.status)
    if filters.cursor:
        avatars = avatars.filter(pk__lt=int(filters.cursor))
    page = list(avatars[: filters.limit + 1])
    more = len(page) > filters.limit
    page = page[: filters.limit]
    items: list[dict[str, Any]] = [
        representation.avatar_data(a, sorted(a.trainings.all(), key=lambda t: t.attempt))
        for a in page
    ]
    return {"items": items, "next_cursor": str(page[-1].pk) if more else None}


@api.post(
    "/avatars/{avatar_id}/cancel",
    auth=WRITE,
    response={202: CancelOut, _ERRORS: ErrorOut},
    summary="Ask fal to stop the avatar's active training",
)
def cancel_avatar(request: HttpRequest, avatar_id: int):
    client: ApiClient = request.auth  # type: ignore[attr-defined]
    avatar = _avatar_or_404(avatar_id, client)
    training = avatar.current_training
    if training is None or not training.is_active:
        raise ApiError(409, "no_active_training", "The avatar has no active training.")
    detail = cancel_training(training, source=API_SOURCE)
    training.refresh_from_db()
    avatar = _avatar_or_404(avatar_id, client)
    if training.finished_at is not None and training.outcome == TrainingOutcome.CANCELLED:
        return Status(202, {"cancel": "cancelled", "avatar": representation.avatar_data(avatar)})
    if training.finished_at is None and training.cancel_requested_at is not None:
        return Status(202, {"cancel": "requested", "avatar": representation.avatar_data(avatar)})
    # fal did not take the cancel (it had finished the job, or did not answer).
    raise ApiError(409, "not_cancelled", str(detail))


adopt.register(api, WRITE, start_answer=start_answer, link=_link)
