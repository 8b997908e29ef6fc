"""What one webhook delivery costs the database, statement by statement.

The intake reads a training with its avatar and owner in one query
(``deliveries._LOOKUP_FIELDS``). A field it leaves out is still loaded, one query each,
which is correct but doubles the reads of a delivery; these tests fail when that
happens, so the field list never silently falls behind what the transitions, the
outbox and the API's callbacks read.
"""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fakes.fal_signing import delivery_body, lora_payload
from monitoring.models import AvatarStatus
from notifications.models import Notification


def _reads(queries, table: str) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].startswith("SELECT") and f'"{table}"' in q["sql"]]


# What Django sends to load one deferred field of a row it has already read.
_DEFERRED_LOAD = re.compile(r'SELECT "(\w+)"\."id", "\1"\."\w+" FROM "\1" WHERE "\1"\."id" = \d+')


def _deferred_loads(queries) -> list[str]:
    return [q["sql"] for q in queries if _DEFERRED_LOAD.match(q["sql"])]


@pytest.mark.parametrize("owner_message", ["", "photos"])
def test_a_completing_delivery_reads_its_training_avatar_and_owner_once(
    deliver, training_avatar, owner_message
):
    avatar, training = training_avatar("req-statements")
    if owner_message:
        type(training).objects.filter(pk=training.pk).update(owner_message=owner_message)
    body = delivery_body("req-statements", payload=lora_payload("req-statements"))

    with CaptureQueriesContext(connection) as queries:
        response = deliver(body)

    assert response.status_code == 200, response.content
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert Notification.objects.filter(avatar=avatar).count() == 1
    # One read of the training (the lookup, with its replay check), none of the avatar
    # or the owner on their own: everything finishing needs came with the lookup.
    assert not _deferred_loads(queries)
    assert len(_reads(queries, "monitoring_training")) == 1, _reads(queries, "monitoring_training")
    assert not [
        sql for sql in _reads(queries, "monitoring_avatar") if "monitoring_training" not in sql
    ]
    assert not [
        sql for sql in _reads(queries, "monitoring_owner") if "monitoring_training" not in sql
    ]


def test_an_error_delivery_loads_no_field_of_its_training_on_its_own(deliver, training_avatar):
    avatar, _training = training_avatar("req-statements-err")
    body = delivery_body(
        "req-statements-err", status="ERROR", error="boom", payload={"detail": "bad photos"}
    )

    with CaptureQueriesContext(connection) as queries:
        response = deliver(body)

    assert response.status_code == 200, response.content
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.ERROR
    # Besides the lookup, only the deliberate read under the avatar's lock: whether a
    # cancel was asked for meanwhile (then the failure is a cancellation).
    assert not _deferred_loads(queries)
    others = _reads(queries, "monitoring_training")[1:]
    assert len(others) == 1 and "cancel_requested_at" in others[0], others
