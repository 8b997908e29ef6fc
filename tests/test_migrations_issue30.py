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
    old = _migrate([("monitoring", "0013_self_healing")])
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


@pytest.mark.django_db(transaction=True)
def test_avatars_the_call_log_names_are_given_to_their_first_client_the_rest_to_none():
    from monitoring.api.models import ClientAvatar

    old = _migrate([("api", "0002_self_healing"), ("monitoring", "0014_redact_stored_fal_text")])
    Owner = old.get_model("monitoring", "Owner")
    Avatar = old.get_model("monitoring", "Avatar")
    ApiClient = old.get_model("api", "ApiClient")
    OldLink = old.get_model("api", "ClientAvatar")
    IdempotencyKey = old.get_model("api", "IdempotencyKey")
    ApiCall = old.get_model("api", "ApiCall")
    owner = Owner.objects.create(telegram_id=5554)

    def avatar(name):
        return Avatar.objects.create(owner=owner, name=name, trigger_word="t", images_url="x")

    def client(name):
        return ApiClient.objects.create(name=name, token_hash=name * 8, token_prefix=name)

    alice, bob = client("alice"), client("bob")
    linked, created, started, staffs = (
        avatar(n) for n in ("linked", "created", "started", "staff")
    )
    OldLink.objects.create(avatar=linked, client=bob)
    IdempotencyKey.objects.create(
        client=alice, key="k1", request_hash="h", state="done", avatar=created
    )
    IdempotencyKey.objects.create(
        client=bob, key="k2", request_hash="h", state="done", avatar=linked
    )
    for who, path, status in (
        (bob, f"/api/v1/avatars/{started.pk}/trainings", 201),  # the first to start it
        (alice, f"/api/v1/avatars/{started.pk}/trainings", 201),
        (alice, f"/api/v1/avatars/{staffs.pk}/trainings", 404),  # tried, refused
        (alice, f"/api/v1/avatars/{staffs.pk}", 200),  # only read
    ):
        ApiCall.objects.create(
            client=who,
            method="POST" if status != 200 else "GET",
            path=path,
            status=status,
            duration_ms=1,
        )

    _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    owners = dict(ClientAvatar.objects.values_list("avatar__name", "client__name"))
    assert owners == {"linked": "bob", "created": "alice", "started": "bob"}
