"""The avatar as the API shows it: GET answers, POST answers and event bodies alike.
Ids are strings (no client parses a 64-bit id into a float); nothing is translated.
``read`` is SQL: building that four-join ORM query cost more than running it (bench/api.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import connection
from django.db.models import Field, Model

from monitoring import billing, eta, files
from monitoring.api.models import ApiClient, ClientAvatar, Scope
from monitoring.models import (
    Avatar,
    CostState,
    FalStatus,
    KeptFile,
    Owner,
    Training,
    TrainingOutcome,
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def submit_state(training: Training) -> str:
    """What became of the submit, from the training row only (so it holds whichever path
    later resolves a lost answer): "unknown" has no request id although its start call
    returned (looked up, never resubmitted); "held" waits for fal's balance."""
    if training.outcome == TrainingOutcome.REFUSED:
        return "refused"
    if training.is_held:
        return "held"
    if not training.fal_request_id:
        return "unknown"
    return "accepted"


def training_data(
    training: Training, *, links: bool = True, kept: list[KeptFile] | None = None
) -> dict[str, Any]:
    """``links=False``: the ``files`` URLs left out (what an event callback stores);
    ``kept``: the attempt's kept files when the caller has read them already."""
    submit = submit_state(training)
    refused = submit == "refused"
    return {
        "id": str(training.pk),
        "attempt": training.attempt,
        "endpoint": training.endpoint,
        "submit": submit,
        "submit_error": (
            {"type": training.error_type, "message": training.error_message} if refused else None
        ),
        "fal_request_id": training.fal_request_id,
        "fal_status": training.fal_status or None,
        "queue_position": training.queue_position,
        "eta": eta.as_json(training),
        "outcome": training.outcome or None,
        "lora_url": training.lora_url,
        "config_url": training.config_url,
        "files": files.files_data(training, kept, links=links),
        "error": "" if refused else training.error_message,
        "error_type": "" if refused else training.error_type,
        "stuck": training.is_stuck,
        "held_reason": training.held_reason if training.is_held else None,
        "cost": cost_data(training),
        "cancel_requested_at": _iso(training.cancel_requested_at),
        "created_at": _iso(training.created_at),
        "submitted_at": _iso(training.submitted_at),
        "finished_at": _iso(training.finished_at),
    }


def avatar_data(
    avatar: Avatar,
    trainings: list[Training] | None = None,
    *,
    links: bool = True,
    kept: dict[int, list[KeptFile]] | None = None,
) -> dict[str, Any]:
    """``current_data`` plus what the client sent and every attempt (``trainings``, oldest
    first, read when not given, with their kept files unless ``kept`` has them by id)."""
    training = avatar.current_training
    if trainings is None:
        trainings = list(avatar.trainings.order_by("attempt").prefetch_related("kept_files"))
    # The current attempt is one of them: its kept files are read once.
    training = next((t for t in trainings if training and t.pk == training.pk), training)
    try:
        reference = avatar.api_link.client_reference or None
    except ObjectDoesNotExist:  # made by staff: no client, no reference
        reference = None
    owner = avatar.owner
    billed = (CostState.BILLED, CostState.NOT_BILLED)
    known_costs = [t.cost_nano_usd or 0 for t in trainings if t.cost_state in billed]
    return {
        **current_data(avatar, training, _kept(kept, training) if training else None, links),
        "trigger": avatar.trigger_word,
        "images_url": avatar.images_url,
        "settings": avatar.training_settings or {},
        "client_reference": reference,
        "owner": {
            "telegram_id": str(owner.telegram_id),
            "username": owner.username,
            "language": owner.language,
        },
        "cost_usd": billing.usd_text(sum(known_costs)) if known_costs else None,
        "trainings": [training_data(t, links=links, kept=_kept(kept, t)) for t in trainings],
    }


def current_data(
    avatar: Avatar,
    training: Training | None,
    kept: list[KeptFile] | None = None,
    links: bool = True,
) -> dict[str, Any]:
    """The avatar and its current attempt: what ``check_avatar_db --json`` prints too."""
    queued = training and training.finished_at is None and training.fal_status == FalStatus.IN_QUEUE
    return {
        "id": str(avatar.pk),
        "name": avatar.name,
        "status": avatar.status,
        "training_type": avatar.training_type,
        "fal_status": (training.fal_status or None) if training else None,
        "fal_request_id": training.fal_request_id if training else None,
        "queue_position": training.queue_position if training and queued else None,
        "eta": eta.as_json(training),
        "lora_url": training.lora_url if training else "",
        "config_url": training.config_url if training else "",
        "files": files.files_data(training, kept, links=links) if training else None,
        "error": training.error_message if training else "",
        "error_type": training.error_type if training else "",
        "stuck": bool(training and training.is_stuck),
        "stuck_reason": training.stuck_reason if training and training.is_stuck else "",
        "owner_telegram_id": str(avatar.owner.telegram_id),
        "created_at": _iso(avatar.created_at),
        "finished_at": _iso(training.finished_at) if training else None,
    }


def _kept(kept: dict[int, list[KeptFile]] | None, training: Training) -> list[KeptFile] | None:
    return None if kept is None else kept.get(training.pk, [])


def _number(value: Decimal | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def cost_data(training: Training) -> dict[str, Any] | None:
    """What fal billed for the attempt, exactly; None while unknown (being looked up)."""
    if training.cost_state == CostState.BILLED:
        price = training.cost_unit_price
        return {
            "usd": billing.usd_text(training.cost_nano_usd),
            "units": _number(training.cost_units),
            "unit_price": str(price.normalize()) if price is not None else None,
        }
    if training.cost_state == CostState.NOT_BILLED:
        return {"usd": billing.usd_text(0), "units": 0, "unit_price": None}
    return None


def load_avatar(avatar_id: int, client: ApiClient) -> Avatar | None:
    """The avatar, or None when ``client`` may not see it."""
    avatars = Avatar.objects.select_related("owner", "current_training", "api_link")
    return avatars.filter(client.avatar_filter(), pk=avatar_id).first()


# fal's raw answer, the submitted input and the logs are never shown: not read either.
UNSHOWN = frozenset({"result", "arguments", "logs_tail"})

_Part = tuple[type[Model], list[Field], list[tuple[list[Callable[..., Any]], Any]], slice]
_TABLES = ((Avatar, "a"), (Owner, "o"), (ClientAvatar, "l"), (Training, "t"), (KeptFile, "k"))


# Rows become model instances with ``Model.from_db`` and each field's converters, as the
# ORM does; the columns come from the models, so a new field needs no change here.
@cache
def _statement(vendor: str) -> tuple[str, list[_Part]]:
    """The SQL and the models it reads, with their columns' place (once per process)."""
    q = connection.ops.quote_name
    columns: list[str] = []
    parts: list[_Part] = []
    for model, alias in _TABLES:
        fields = [
            f for f in model._meta.concrete_fields if not (model is Training and f.name in UNSHOWN)
        ]
        converters = []
        for f in fields:
            column = f.get_col(alias)
            found = connection.ops.get_db_converters(column) + f.get_db_converters(connection)
            converters.append((found, column))
        parts.append((model, fields, converters, slice(len(columns), len(columns) + len(fields))))
        columns += [f"{alias}.{q(f.column or f.attname)}" for f in fields]
    sql = (
        f"SELECT {', '.join(columns)} FROM {q(Avatar._meta.db_table)} a "
        f"JOIN {q(Owner._meta.db_table)} o ON o.id = a.owner_id "
        f"LEFT JOIN {q(ClientAvatar._meta.db_table)} l ON l.avatar_id = a.id "
        f"LEFT JOIN {q(Training._meta.db_table)} t ON t.avatar_id = a.id "
        f"LEFT JOIN {q(KeptFile._meta.db_table)} k ON k.training_id = t.id "
        "WHERE a.id = %s"
    )
    return sql, parts


def _instance(part: _Part, row: tuple[Any, ...]) -> Model | None:
    model, fields, converters, columns = part
    values = row[columns]
    if values[0] is None:  # no row on this side of a LEFT JOIN
        return None
    converted = []
    for value, (field_converters, column) in zip(values, converters, strict=True):
        for convert in field_converters:
            value = convert(value, column, connection)
        converted.append(value)
    return model.from_db(connection.alias, [f.attname for f in fields], converted)


def read(
    avatar_id: int, client: ApiClient | None = None
) -> tuple[Avatar, list[Training], dict[int, list[KeptFile]]] | None:
    """The avatar (owner, ``api_link``, ``current_training`` set), its attempts oldest
    first and their kept files by training id; None when ``client`` may not see it."""
    if not -(2**63) <= avatar_id < 2**63:
        return None  # no row has it, and SQLite cannot even bind it
    sql, parts = _statement(connection.vendor)
    params: list[Any] = [avatar_id]
    if client is not None and not client.has_scope(Scope.AVATARS_ALL):
        # The rule of ApiClient.avatar_filter: only the avatars linked to this client.
        sql += " AND l.client_id = %s"
        params.append(client.pk)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return None
    avatar: Avatar | None = None
    trainings: dict[int, Training] = {}
    kept: dict[int, list[KeptFile]] = {}
    for row in rows:
        a, owner, link, training, kept_file = (_instance(part, row) for part in parts)
        if avatar is None:
            assert isinstance(a, Avatar) and isinstance(owner, Owner)
            avatar = a
            avatar.owner = owner
            # The reverse one-to-one, cached as select_related would (None: no client).
            Avatar.api_link.related.set_cached_value(avatar, link)
        if isinstance(training, Training) and training.pk not in trainings:
            training.avatar = avatar
            trainings[training.pk] = training
            kept[training.pk] = []
        if isinstance(kept_file, KeptFile):
            kept[kept_file.training_id].append(kept_file)
    assert avatar is not None
    attempts = sorted(trainings.values(), key=lambda t: t.attempt)
    avatar.current_training = trainings.get(avatar.current_training_id)  # type: ignore[arg-type]
    return avatar, attempts, kept
