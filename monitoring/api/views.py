"""``/api/v1/``: thin views over ``monitoring.trainings`` and ``monitoring.transitions``,
where the rules live. Each operation documents its own errors (``schemas.documented``).
docs/api.md.
"""

from __future__ import annotations

from typing import Any, Literal

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from ninja import Header, Query, Schema, Status
from ninja.operation import Operation
from pydantic import Field

from monitoring import billing, trainings, transitions
from monitoring.api import idempotency, middleware, representation, schemas
from monitoring.api.middleware import ApiError
from monitoring.api.models import ApiClient, ClientAvatar, IdempotencyKey, Scope
from monitoring.api.schemas import INVALID, NOT_FOUND, DocumentedApi, Err, documented
from monitoring.api.tokens import ClientToken
from monitoring.models import Avatar, AvatarStatus, EventSource, Owner, Training, TrainingOutcome
from monitoring.trainings import cancel_training, create_avatar_for_owner, start_training
from monitoring.transitions import RETRAINABLE

API_SOURCE = EventSource.API
WRITE = ClientToken(Scope.TRAININGS_WRITE)
READ = ClientToken(Scope.AVATARS_READ)
_WRITE_ERRORS = schemas.access(Scope.TRAININGS_WRITE)
_READ_ERRORS = schemas.access(Scope.AVATARS_READ)
_START_ERRORS = (
    Err(
        409,
        "in_progress",
        "A request with this Idempotency-Key is still running: retry shortly.",
        "A request with this Idempotency-Key is still in progress.",
    ),
    Err(
        409,
        "key_reused",
        "This Idempotency-Key was used for another request.",
        "This Idempotency-Key was used for a different request.",
    ),
    Err(
        402,
        "over_budget",
        "The client's daily budget (`daily_budget_usd`) is reached by known spend plus the "
        "estimate of its running trainings; nothing was created or sent.",
        "The daily budget of this client is reached.",
    ),
)
_NOT_STARTABLE = Err(
    409,
    "not_startable",
    "fal did not take the start, or the avatar is in a state that does not start "
    "(only draft, ready_for_training, error and cancelled avatars start).",
    "The avatar is completed: only draft, ready_for_training, error and cancelled avatars start.",
)
_IDEMPOTENCY_KEY = Header(
    ...,
    alias="Idempotency-Key",
    description="Required. Your id for this start (a UUID, say; 1 to 255 printable ASCII "
    "characters): repeat the request with the same key and body after a timeout and you get the first "
    "answer back, marked `Idempotent-Replayed: true`, never a second training. Kept "
    "API_IDEMPOTENCY_KEY_HOURS (at least 24 h).",
)
api = DocumentedApi(
    title="Avatar training monitor",
    version="1",
    description=(
        "Start and follow avatar trainings. Authenticate with `Authorization: Bearer <token>`; "
        "POSTs that start a training need an `Idempotency-Key` header (a replayed answer "
        "carries `Idempotent-Replayed: true`). Every answer carries `X-Request-ID` (yours "
        'when you send a sane one). Every error is `{"error": code, "detail": text, '
        '"fields"?: {name: message}}`; each operation lists its own codes. Unknown query '
        "parameters are refused (400), never ignored. Ids: "
        + schemas.ID_NOTE
        + schemas.callbacks_description()
    ),
    urls_namespace="api-v1",
)
middleware.install(api)


@api.get("/", include_in_schema=False)
def index(request: HttpRequest):
    """``/api/v1/``: where the document is, as JSON like every answer here."""
    return {
        "title": api.title,
        "version": api.version,
        "docs": request.build_absolute_uri("docs"),
        "openapi": request.build_absolute_uri("openapi.json"),
    }


def _or_404(avatar_id: int, found: Any) -> Any:
    """``found``, or a 404 (another client's avatar is one too)."""
    if found is None:
        raise ApiError(404, "not_found", f"No avatar with id {avatar_id}.")
    return found


def start_answer(training: Training) -> idempotency.Answer:
    """201 with the avatar and ``training`` as the database holds them; 202 when the start
    is held for fal's balance (``submit: "held"``, nothing sent)."""
    avatar, attempts, kept = _or_404(training.avatar_id, representation.read(training.avatar_id))
    chosen = next(t for t in attempts if t.pk == training.pk)
    return 202 if chosen.is_held else 201, {
        "avatar": representation.avatar_data(avatar, attempts, kept=kept),
        "training": representation.training_data(chosen, kept=kept.get(chosen.pk, [])),
    }


def _within_budget(client: ApiClient) -> None:
    """Automatic retries never pass here."""
    over, figures = billing.over_budget(client)
    if over:
        raise ApiError(
            402,
            "over_budget",
            f"Daily budget reached: {figures['spent_usd']} USD spent today and about "
            f"{figures['running_estimate_usd']} USD running, of {figures['budget_usd']} USD.",
        )


def _recover(row: IdempotencyKey) -> idempotency.Answer | None:
    assert row.avatar_id is not None
    last = Training.objects.filter(avatar_id=row.avatar_id).order_by("-attempt").first()
    return start_answer(last) if last else None


def _link(avatar: Avatar, client: ApiClient, reference: str = "") -> None:
    """The client that created or started an avatar gets its events (the first one keeps
    it); a reference it sends replaces the one it set before."""
    link, created = ClientAvatar.objects.get_or_create(
        avatar=avatar, defaults={"client": client, "client_reference": reference}
    )
    if not created and reference and link.client_id == client.pk:
        ClientAvatar.objects.filter(pk=link.pk).update(client_reference=reference)


def _started(avatar: Avatar) -> idempotency.Answer:
    outcome = start_training(avatar, source=API_SOURCE)
    if outcome.training is None:
        raise ApiError(
            409, "not_startable", f"The avatar was not started: {outcome.detail or outcome.status}."
        )
    return start_answer(outcome.training)


@api.post(
    "/trainings",
    auth=WRITE,
    summary="Create the owner if needed and a new avatar, and start its training",
    description=(
        "201 with the avatar and the attempt. `training.submit` says what became of the "
        "submit: `accepted` (fal took it), `refused` (fal refused it: `submit_error` has "
        "fal's reason, nothing was billed, the avatar is `ready_for_training` again) or "
        "`unknown` (fal's answer was lost: it is looked up, never resubmitted). "
        '202 when the start is held (`submit: "held"`): fal\'s balance is low or the '
        "account locked; it is sent once the balance is back, and the owner is told "
        "nothing until then."
    ),
    **documented(
        {201: schemas.StartOut, 202: schemas.StartOut},
        *_WRITE_ERRORS,
        *schemas.BODY_ERRORS,
        *_START_ERRORS,
        _NOT_STARTABLE,
        idempotent=True,
    ),
)
def create_training(
    request: HttpRequest,
    response: HttpResponse,
    payload: schemas.TrainingIn,
    idempotency_key: str = _IDEMPOTENCY_KEY,
):
    client: ApiClient = request.auth  # type: ignore[attr-defined]

    def perform(row: IdempotencyKey) -> idempotency.Answer:
        _within_budget(client)
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
            _link(avatar, client, payload.client_reference)
            # Noted with the avatar, so that an answer can be rebuilt whatever happens next.
            IdempotencyKey.objects.filter(pk=row.pk).update(avatar=avatar)
        return _started(avatar)

    body = payload.model_dump(mode="json")
    return idempotency.run_once(
        request, response, idempotency_key, perform, _recover, "/trainings", body
    )


@api.post(
    "/avatars/{avatar_id}/trainings",
    auth=WRITE,
    summary="Start an existing avatar, or retrain a failed or cancelled one",
    description='201: sent to fal. 202: held for fal\'s balance (`submit: "held"`).',
    **documented(
        {201: schemas.StartOut, 202: schemas.StartOut},
        *_WRITE_ERRORS,
        NOT_FOUND,
        INVALID,
        *_START_ERRORS,
        Err(409, "already_training", "The avatar is training already."),
        _NOT_STARTABLE,
        idempotent=True,
    ),
)
def start_avatar(
    request: HttpRequest,
    response: HttpResponse,
    avatar_id: int,
    idempotency_key: str = _IDEMPOTENCY_KEY,
):
    client: ApiClient = request.auth  # type: ignore[attr-defined]

    def perform(row: IdempotencyKey) -> idempotency.Answer:
        avatar = _or_404(avatar_id, representation.load_avatar(avatar_id, client))
        if avatar.status in (AvatarStatus.DRAFT, AvatarStatus.READY_FOR_TRAINING, *RETRAINABLE):
            _within_budget(client)
        if avatar.status == AvatarStatus.DRAFT:
            transitions.mark_ready(avatar, source=API_SOURCE)
        elif avatar.status in RETRAINABLE:
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

    path = f"/avatars/{avatar_id}/trainings"
    return idempotency.run_once(request, response, idempotency_key, perform, _recover, path)


@api.get(
    "/avatars/{avatar_id}",
    auth=READ,
    summary="An avatar with its attempts",
    description="What was sent (owner, trigger, images URL, settings, client_reference), "
    "where it is on fal and every attempt, oldest first.",
    **documented({200: schemas.AvatarOut}, *_READ_ERRORS, NOT_FOUND, INVALID),
)
def get_avatar(request: HttpRequest, avatar_id: int):
    client = request.auth  # type: ignore[attr-defined]
    avatar, attempts, kept = _or_404(avatar_id, representation.read(avatar_id, client))
    return representation.avatar_data(avatar, attempts, kept=kept)


class AvatarFilters(Schema):
    owner_telegram_id: int | None = Field(None, gt=0, description="The owner's Telegram id.")
    status: Literal[tuple(AvatarStatus.values)] | None = None  # type: ignore[valid-type]
    client_reference: str | None = Field(
        None, max_length=255, description="Avatars you gave this client_reference."
    )
    cursor: str | None = Field(
        None, pattern=r"^[0-9]{1,19}$", description="next_cursor of the previous page."
    )
    limit: int = Field(50, ge=1, le=200)


@api.get(
    "/avatars",
    auth=READ,
    summary="Avatars, newest first, by owner, status or client_reference; pass next_cursor "
    "to go on",
    **documented({200: schemas.AvatarPage}, *_READ_ERRORS, INVALID),
)
def list_avatars(request: HttpRequest, filters: Query[AvatarFilters]):
    client: ApiClient = request.auth  # type: ignore[attr-defined]
    avatars = (
        Avatar.objects.filter(client.avatar_filter())
        .select_related("owner", "current_training", "api_link")
        .prefetch_related("trainings__kept_files")
        .order_by("-pk")
    )
    lookups = {
        "owner__telegram_id": filters.owner_telegram_id,
        "status": filters.status,
        "api_link__client_reference": filters.client_reference,
        "pk__lt": filters.cursor,
    }
    page = list(avatars.filter(**{k: v for k, v in lookups.items() if v})[: filters.limit + 1])
    items = [
        representation.avatar_data(a, sorted(a.trainings.all(), key=lambda t: t.attempt))
        for a in page[: filters.limit]
    ]
    more = len(page) > filters.limit
    return {"items": items, "next_cursor": items[-1]["id"] if more else None}


@api.post(
    "/avatars/{avatar_id}/cancel",
    auth=WRITE,
    summary="Ask fal to stop the avatar's active training",
    description='202 with `"cancel": "requested"` once fal was asked (the avatar '
    "turns cancelled when fal confirms; an `avatar.cancelled` event follows), or "
    '`"cancelled"` when nothing was running on fal.',
    **documented(
        {202: schemas.CancelOut},
        *_WRITE_ERRORS,
        NOT_FOUND,
        INVALID,
        Err(409, "no_active_training", "The avatar has no active training."),
        Err(
            409,
            "not_cancelled",
            "fal did not take the cancel: it had finished the job, or did not answer.",
            "fal answered: the request has already completed.",
        ),
    ),
)
def cancel_avatar(request: HttpRequest, avatar_id: int):
    client: ApiClient = request.auth  # type: ignore[attr-defined]
    training = _or_404(avatar_id, representation.load_avatar(avatar_id, client)).current_training
    if training is None or not training.is_active:
        raise ApiError(409, "no_active_training", "The avatar has no active training.")
    detail = cancel_training(training, source=API_SOURCE)
    training.refresh_from_db()
    if training.finished_at is not None and training.outcome == TrainingOutcome.CANCELLED:
        cancel = "cancelled"
    elif training.finished_at is None and training.cancel_requested_at is not None:
        cancel = "requested"
    else:  # fal did not take the cancel (it had finished the job, or did not answer)
        raise ApiError(409, "not_cancelled", str(detail))
    avatar = _or_404(avatar_id, representation.load_avatar(avatar_id, client))
    return Status(202, {"cancel": cancel, "avatar": representation.avatar_data(avatar)})


class QuoteQuery(Schema):
    training_type: Literal["portrait", "style"] = "portrait"
    steps: int | None = Field(None, ge=1, le=100_000)


@api.get(
    "/quote",
    auth=READ,
    summary="What a training would cost, from fal's unit prices (cached an hour)",
    **documented(
        {200: schemas.QuoteOut},
        *_READ_ERRORS,
        INVALID,
        Err(
            503,
            "prices_unavailable",
            "fal's unit prices could not be read (and none are cached).",
            "fal's prices are not available.",
        ),
    ),
)
def get_quote(request: HttpRequest, query: Query[QuoteQuery]):
    try:
        return billing.quote(query.training_type, query.steps).as_json()
    except billing.PricesUnavailable as exc:
        raise ApiError(
            503, "prices_unavailable", f"fal's prices are not available: {exc}"
        ) from None


@api.post(
    "/trainings/adopt",
    auth=WRITE,
    summary="Adopt a fal request started elsewhere (idempotent on the request id)",
    operation_id="monitoring_api_adopt_adopt_training",  # as published before the move
    **documented(
        {200: schemas.AdoptOut, 201: schemas.AdoptOut},
        *_WRITE_ERRORS,
        *schemas.BODY_ERRORS,
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
def adopt_training(request: HttpRequest, payload: schemas.AdoptIn):
    client: ApiClient = request.auth  # type: ignore[attr-defined]
    try:
        result = trainings.adopt_training(
            request_id=payload.request_id,
            endpoint=payload.endpoint,
            owner_telegram_id=payload.owner.telegram_id,
            name=payload.name,
            training_type=payload.training_type,
            owner_language=payload.owner.language,
            notify=payload.notify,
            source=API_SOURCE,
        )
    except trainings.AdoptRefused as exc:
        reason = str(exc)
        raise ApiError(422, "adopt_refused", reason, fields={"request_id": reason}) from None
    avatar = result.avatar
    if not result.adopted and representation.load_avatar(avatar.pk, client) is None:
        # Followed already, for another client or for staff: not this client's to see.
        raise ApiError(404, "not_found", "No avatar of this client follows this request.")
    if payload.owner.username:
        Owner.objects.filter(pk=avatar.owner_id).exclude(username=payload.owner.username).update(
            username=payload.owner.username
        )
    _link(avatar, client, payload.client_reference)
    _status, body = start_answer(result.training)
    return Status(201 if result.adopted else 200, {**body, "adopted": result.adopted})


def _refuse_unknown_parameters(operation: Operation) -> None:
    """A 400 naming them: a misspelt filter (``?state=``) must never answer the unfiltered
    list as if it had been applied. Checked after the token, before validation."""
    allowed: list[str] = []  # what the operation declares, in its order
    for model in operation.models:
        if getattr(model, "__ninja_param_source__", None) == "query":
            allowed.extend(getattr(model, "__ninja_flatten_map__", None) or model.model_fields)
    resolve = operation._get_values  # django-ninja's step that validates parameters

    def checked(request: HttpRequest, path_params: Any, temporal_response: Any) -> Any:
        unknown = [name for name in request.GET if name not in allowed]
        if unknown:
            takes = ", ".join(allowed) if allowed else "no query parameters"
            plural = "s" if len(unknown) > 1 else ""
            raise ApiError(
                400,
                "unknown_parameters",
                f"Unknown query parameter{plural}: {', '.join(unknown)}. "
                f"This operation takes: {takes}.",
                fields={f"query.{name}": "unknown parameter" for name in unknown},
            )
        return resolve(request, path_params, temporal_response)

    operation._get_values = checked  # type: ignore[method-assign]


# Last: every operation is in place.
for bound in api._get_bound_routers():
    for path_view in bound.path_operations.values():
        for operation in path_view.operations:
            _refuse_unknown_parameters(operation)
