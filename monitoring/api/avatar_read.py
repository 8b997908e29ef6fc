"""An avatar with its owner, client link, attempts and kept files, in one statement.

Written as SQL: building that four-join ORM query cost more than running it (bench/api.py).
The rows become model instances with ``Model.from_db`` and each field's converters, as the
ORM does; the columns come from the models, so a new field needs no change here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from django.db import connection
from django.db.models import Field, Model

from monitoring.api.models import ApiClient, ClientAvatar, Scope
from monitoring.models import Avatar, KeptFile, Owner, Training

# fal's raw answer, the submitted input and the logs are never shown: not read either.
UNSHOWN = frozenset({"result", "arguments", "logs_tail"})

_Part = tuple[type[Model], list[Field], list[tuple[list[Callable[..., Any]], Any]], slice]
_TABLES = ((Avatar, "a"), (Owner, "o"), (ClientAvatar, "l"), (Training, "t"), (KeptFile, "k"))


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
