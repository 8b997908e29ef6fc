"""The data migrations of issue 30: stored fal text redacted, API clients' avatars recorded."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from monitoring.models import AvatarEvent, Training

KEY = "test-key-id:test-key-secret-value"  # tests/settings.py


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_fal_text_stored_before_redaction_is_redacted_and_the_rest_kept():
    old = _migrate([("monitoring", "0011_owner_reachability_moves_to_notifications")])
    Owner = old.get_model("monitoring", "Owner")
    Avatar = old.get_model("monitoring", "Avatar")
    OldTraining = old.get_model("monitoring", "Training")
    OldEvent = old.get_model("monitoring", "AvatarEvent")
    avatar = Avatar.objects.create(
        owner=Owner.objects.create(telegram_id=5553), name="a", trigger_word="t", images_url="x"
    )
    leaked = OldTraining.objects.create(
        avatar=avatar,
        attempt=1,
        endpoint="fal-ai/x",
        error_message=f"No user found for Key {KEY}",
        result={"detail": [{"msg": f"key {KEY}"}]},
    )
    clean = OldTraining.objects.create(
        avatar=avatar, attempt=2, endpoint="fal-ai/x", error_message="Could not find faces"
    )
    OldEvent.objects.create(
        avatar=avatar, kind="status", source="check", message=KEY, details={"fal_error": KEY}
    )

    _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    leaked = Training.objects.get(pk=leaked.pk)
    assert leaked.error_message == "No user found for Key [redacted]"
    assert leaked.result == {"detail": [{"msg": "key [redacted]"}]}
    assert Training.objects.get(pk=clean.pk).error_message == "Could not find faces"
    event = AvatarEvent.objects.get()
    assert (event.message, event.details) == ("[redacted]", {"fal_error": "[redacted]"})
