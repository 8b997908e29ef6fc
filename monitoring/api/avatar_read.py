"""An avatar with its owner, client link, attempts and kept files, in one statement.

What ``GET /avatars/{id}`` and every start answer read. Written as SQL, not as an ORM
query: building that four-join query cost more than running it (bench/api.py). The rows
become model instances with ``Model.from_db`` and each field's database converters, as
the ORM does; the columns come from the models, so a new field needs no change here.
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

_Part = tuple[type[Model], str, list[Field], list[tuple[list[Callable[..., Any]], Any]]]


def _part(model: type[Model], alias: str, exclude: frozenset[str] = frozenset()) -> _Part:
    fields = [f for f in model._meta.concrete_fields if f.name not in exclude]
    converters = []
    for f in fields:
        column = f.get_col(alias)
        found = connection.ops.get_db_converters(column) + f.get_db_converters(connection)
        converters.append((found, column))
    return model, alias, fields, converters


@cache
def _statement(vendor: str) -> tuple[str, list[_Part]]:
    """The SQL and the models it reads, in column order (once per process)."""
    parts = [
        _part(Avatar, "a"),
        _part(Owner, "o"),
        _part(ClientAvatar, "l"),
        _part(Training, "t", UNSHOWN),
        _part(KeptFile, "k"),
    ]
    q = connection.ops.quote_name
    columns = ", ".join(
        f"{alias}.{q(f.column or f.attname)}" for _m, alias, fields, _c in parts for f in fields
    )
    sql = (
        f"SELECT {columns} FROM {q(Avatar._meta.db_table)} a "
        f"JOIN {q(Owner._meta.db_table)} o ON o.id = a.owner_id "
        f"LEFT JOIN {q(ClientAvatar._meta.db_table)} l ON l.avatar_id = a.id "
        f"LEFT JOIN {q(Training._meta.db_table)} t ON t.avatar_id = a.id "
        f"LEFT JOIN {q(KeptFile._meta.db_table)} k ON k.training_id = t.id "
        "WHERE a.id = %s"
    )
    return sql, parts


def _instance(part: _Part, values: list[Any]) -> Model | None:
    model, _alias, fields, converters = part
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
        start = 0
        found: list[Model | None] = []
        for part in parts:
            width = len(part[2])
            found.append(_instance(part, list(row[start : start + width])))
            start += width
        a, owner, link, training, kept_file = found
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
