"""The bot's HTTP API through Django's test client, against the fal emulator."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from monitoring.api.models import ApiCall, ApiClient, ClientAvatar, IdempotencyKey
from monitoring.models import Avatar, AvatarStatus, FalStatus, Owner
from monitoring.ops import retention
from tests.api_support import BODY, body, give, run_check

pytestmark = pytest.mark.django_db

# --- Starting -----------------------------------------------------------------------------


def test_a_start_submits_once_to_fal_and_the_training_completes(fal, bot):
    response = bot.post("/api/v1/trainings", BODY, key="k-1")

    assert response.status_code == 201, response.content
    answer = response.json()
    [submission] = fal.submissions
    assert submission["payload"]["trigger_phrase"] == "ohwx woman"
    assert submission["payload"]["steps"] == 500
    training = answer["training"]
    assert training["submit"] == "accepted"
    assert training["fal_request_id"] in fal.jobs
    avatar = answer["avatar"]
    assert avatar["status"] == "training" and avatar["owner_telegram_id"] == "555000111"
    assert isinstance(avatar["id"], str) and isinstance(training["id"], str)
    owner = Owner.objects.get(telegram_id=555000111)
    assert (owner.username, owner.language) == ("anna", "en")
    assert ClientAvatar.objects.get(avatar_id=int(avatar["id"])).client == bot.client

    run_check()

    got = bot.get(f"/api/v1/avatars/{avatar['id']}").json()
    assert got["status"] == "completed"
    assert got["lora_url"].endswith(".safetensors") and got["config_url"].endswith(".json")
    assert got["finished_at"] and got["trainings"][0]["outcome"] == "completed"
    assert len(fal.submissions) == 1


def test_a_refused_submit_still_answers_201_with_fals_reason(fal, bot):
    fal.refuse_next_submit(422)

    response = bot.post("/api/v1/trainings", BODY, key="k-refused")

    assert response.status_code == 201
    answer = response.json()
    assert answer["training"]["submit"] == "refused"
    assert answer["training"]["submit_error"]["type"] == "http_422"
    assert "field required" in answer["training"]["submit_error"]["message"]
    assert answer["avatar"]["status"] == "ready_for_training"


def test_a_lost_submit_answer_is_unknown_and_never_resubmitted(fal, bot, settings):
    settings.FAL_SUBMIT_TIMEOUT_SECONDS = 1.0
    fal.submit_latency = 2.0

    first = bot.post("/api/v1/trainings", BODY, key="k-lost")
    again = bot.post("/api/v1/trainings", BODY, key="k-lost")

    assert first.status_code == 201
    assert first.json()["training"]["submit"] == "unknown"
    assert first.json()["training"]["fal_request_id"] is None
    assert (again.status_code, again.json()) == (201, first.json())
    assert len(fal.submissions) == 1


def test_the_same_key_and_body_give_the_same_answer_and_one_fal_job(fal, bot):
    first = bot.post("/api/v1/trainings", BODY, key="same")
    second = bot.post("/api/v1/trainings", BODY, key="same")

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert len(fal.submissions) == 1 and Avatar.objects.count() == 1


def test_another_body_with_a_used_key_is_409_key_reused(fal, bot):
    bot.post("/api/v1/trainings", BODY, key="reused")

    response = bot.post("/api/v1/trainings", body(name="Other"), key="reused")

    assert response.status_code == 409
    assert response.json()["error"] == "key_reused"
    assert len(fal.submissions) == 1 and Avatar.objects.count() == 1


def test_a_key_still_in_progress_is_409_in_progress(fal, bot):
    # What a second request sees while the first is between its key and fal's answer.
    from monitoring.api import idempotency

    IdempotencyKey.objects.create(
        client=bot.client,
        key="busy",
        request_hash=idempotency.request_hash("POST", "/trainings", _validated(BODY)),
        state=IdempotencyKey.State.IN_PROGRESS,
    )

    response = bot.post("/api/v1/trainings", BODY, key="busy")

    assert response.status_code == 409 and response.json()["error"] == "in_progress"
    assert fal.submissions == [] and Avatar.objects.count() == 0


def test_a_key_left_in_progress_by_a_dead_process_is_answered_from_the_database(
    fal, bot, make_avatar
):
    from monitoring.api import idempotency

    avatar = make_avatar()
    give(avatar, bot)
    bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="first")
    long_ago = timezone.now() - timedelta(hours=1)
    digest = idempotency.request_hash("POST", f"/avatars/{avatar.pk}/trainings", None)
    for key, noted in (("died-after-avatar", avatar), ("died-before-avatar", None)):
        IdempotencyKey.objects.create(
            client=bot.client,
            key=key,
            request_hash=digest,
            state=IdempotencyKey.State.IN_PROGRESS,
            avatar=noted,
            created_at=long_ago,
        )

    answered = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="died-after-avatar")
    freed = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="died-before-avatar")

    assert answered.status_code == 201
    assert answered.json()["avatar"]["id"] == str(avatar.pk)
    assert IdempotencyKey.objects.get(key="died-after-avatar").state == "done"
    assert freed.status_code == 409 and freed.json()["error"] == "in_progress"
    assert not IdempotencyKey.objects.filter(key="died-before-avatar").exists()
    assert len(fal.submissions) == 1


def _validated(data: dict) -> dict:
    from monitoring.api.schemas import TrainingIn

    return TrainingIn.model_validate(data).model_dump(mode="json")


def test_keys_are_per_client(fal, bot, make_api_client):
    other = make_api_client(name="other bot")

    assert bot.post("/api/v1/trainings", BODY, key="shared").status_code == 201
    assert other.post("/api/v1/trainings", BODY, key="shared").status_code == 201
    assert len(fal.submissions) == 2


def test_posts_need_no_csrf_token_as_they_carry_a_bearer_token(fal, bot):
    bot.http = Client(enforce_csrf_checks=True)

    response = bot.post("/api/v1/trainings", BODY, key="csrf")

    assert response.status_code == 201


def test_the_idempotency_key_is_required(fal, bot):
    response = bot.post("/api/v1/trainings", BODY)

    assert response.status_code == 422
    assert "header.Idempotency-Key" in response.json()["fields"]
    assert fal.submissions == [] and Avatar.objects.count() == 0


def test_starting_an_existing_avatar_and_retraining_a_failed_one(fal, bot, make_avatar):
    avatar = make_avatar(ready=False)
    give(avatar, bot)

    started = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="start-1")
    assert started.status_code == 201, started.content
    assert started.json()["avatar"]["status"] == "training"
    busy = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="start-2")
    assert busy.status_code == 409 and busy.json()["error"] == "already_training"

    fal.finish(started.json()["training"]["fal_request_id"], error="No faces", error_type="x")
    run_check()
    assert Avatar.objects.get(pk=avatar.pk).status == AvatarStatus.ERROR

    retrained = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="start-3")
    assert retrained.status_code == 201
    assert retrained.json()["training"]["attempt"] == 2
    assert len(retrained.json()["avatar"]["trainings"]) == 2
    assert len(fal.submissions) == 2
    # The key of the refused call was forgotten: it can be used once the avatar may start.
    assert not IdempotencyKey.objects.filter(key="start-2").exists()


def test_a_completed_avatar_does_not_start_again(fal, bot, make_avatar):
    avatar = make_avatar()
    give(avatar, bot)
    bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="c-1")
    run_check()

    response = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="c-2")

    assert response.status_code == 409 and response.json()["error"] == "not_startable"
    assert len(fal.submissions) == 1


def test_an_unknown_avatar_is_404(fal, bot):
    for response in (
        bot.get("/api/v1/avatars/999999"),
        bot.post("/api/v1/avatars/999999/trainings", key="x"),
        bot.post("/api/v1/avatars/999999/cancel"),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    assert IdempotencyKey.objects.count() == 0


# --- Two identical requests at once ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_identical_requests_racing_make_one_fal_job(fal, make_api_client):
    bot = make_api_client()
    fal.submit_latency = 0.5  # the first is still waiting for fal when the second arrives
    answers: list = []
    barrier = threading.Barrier(2)

    def call() -> None:
        try:
            barrier.wait()
            response = bot.post("/api/v1/trainings", BODY, key="race")
            answers.append((response.status_code, response.json()))
        finally:
            connection.close()

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(fal.submissions) == 1
    assert Avatar.objects.count() == 1
    statuses = sorted(status for status, _ in answers)
    assert statuses[0] == 201 and statuses[1] in (201, 409)
    winner = next(answer for status, answer in answers if status == 201)
    loser = next(answer for status, answer in answers[::-1] if answer is not winner)
    assert loser == winner or loser["error"] == "in_progress"
    # Once done, the key answers what the winner got.
    replay = bot.post("/api/v1/trainings", BODY, key="race")
    assert (replay.status_code, replay.json()) == (201, winner)
    assert len(fal.submissions) == 1


# --- Tokens, scopes, rate limit -------------------------------------------------------------


def test_missing_wrong_and_revoked_tokens_are_401(fal, bot):
    anonymous = Client()
    missing = anonymous.get("/api/v1/avatars")
    wrong = anonymous.get("/api/v1/avatars", headers={"Authorization": "Bearer atm_nope"})
    not_bearer = anonymous.get("/api/v1/avatars", headers={"Authorization": f"Basic {bot.token}"})
    ApiClient.objects.filter(pk=bot.client.pk).update(revoked_at=timezone.now())
    revoked = bot.get("/api/v1/avatars")
    revoked_post = bot.post("/api/v1/trainings", BODY, key="after-revoke")

    for response in (missing, wrong, not_bearer, revoked, revoked_post):
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response["WWW-Authenticate"] == "Bearer"
    assert fal.submissions == [] and Avatar.objects.count() == 0


def test_a_token_without_the_scope_is_403(fal, make_api_client, make_avatar):
    reader = make_api_client(name="reader", scopes=("avatars:read",))
    writer = make_api_client(name="writer", scopes=("trainings:write",))
    avatar = make_avatar()
    give(avatar, reader)

    refused_start = reader.post("/api/v1/trainings", BODY, key="r-1")
    refused_read = writer.get(f"/api/v1/avatars/{avatar.pk}")

    assert refused_start.status_code == 403 and refused_read.status_code == 403
    assert refused_start.json()["error"] == "insufficient_scope"
    assert "trainings:write" in refused_start.json()["detail"]
    assert reader.get(f"/api/v1/avatars/{avatar.pk}").status_code == 200
    assert fal.submissions == []


def test_the_tokens_hash_is_stored_never_the_token(bot):
    stored = ApiClient.objects.get(pk=bot.client.pk)
    assert bot.token not in json.dumps(
        {f.name: str(getattr(stored, f.name)) for f in ApiClient._meta.fields}
    )
    assert stored.token_hash != bot.token and len(stored.token_hash) == 64


def test_too_many_calls_are_429_with_retry_after(bot, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 3

    answers = [bot.get("/api/v1/avatars") for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["error"] == "rate_limited"
    assert 1 <= int(answers[-1]["Retry-After"]) <= 60


def test_the_rate_limit_lives_in_redis_when_it_is_set(bot, settings, redis_server):
    settings.REDIS_URL = redis_server
    settings.API_RATE_LIMIT_PER_MINUTE = 2

    answers = [bot.get("/api/v1/avatars").status_code for _ in range(3)]

    assert answers == [200, 200, 429]


def test_each_authenticated_call_is_recorded(bot, make_avatar):
    avatar = make_avatar()
    give(avatar, bot)
    bot.get(f"/api/v1/avatars/{avatar.pk}")
    bot.get("/api/v1/avatars/0")
    Client().get("/api/v1/avatars")  # no client: nothing to record it against

    calls = list(ApiCall.objects.order_by("pk").values_list("client", "method", "path", "status"))
    assert calls == [
        (bot.client.pk, "GET", f"/api/v1/avatars/{avatar.pk}", 200),
        (bot.client.pk, "GET", "/api/v1/avatars/0", 404),
    ]
    assert all(c.duration_ms >= 0 for c in ApiCall.objects.all())
    assert ApiClient.objects.get(pk=bot.client.pk).last_used_at is not None


def test_old_calls_and_keys_are_pruned_by_retention(bot, settings):
    settings.API_IDEMPOTENCY_KEY_HOURS = 24
    old = timezone.now() - timedelta(days=40)
    ApiCall.objects.create(client=bot.client, method="GET", path="/x", status=200, duration_ms=1)
    ApiCall.objects.create(
        client=bot.client, method="GET", path="/x", status=200, duration_ms=1, at=old
    )
    for key, age in (("fresh", timedelta(hours=23)), ("stale", timedelta(hours=25))):
        IdempotencyKey.objects.create(
            client=bot.client,
            key=key,
            request_hash="h",
            state=IdempotencyKey.State.DONE,
            created_at=timezone.now() - age,
        )

    pruned = retention.prune()

    assert (pruned["api_calls"], pruned["api_idempotency_keys"]) == (1, 1)
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["fresh"]


# --- Field errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"owner": {"telegram_id": "abc"}}, "owner.telegram_id"),
        ({"owner": {"telegram_id": -5}}, "owner.telegram_id"),
        ({"owner": {"telegram_id": 1, "language": "de"}}, "owner.language"),
        ({"owner": {"telegram_id": 1, "shoe_size": 42}}, "owner.shoe_size"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"images_url": "ftp://example.com/a.zip"}, "images_url"),
        ({"images_url": "not a url"}, "images_url"),
        ({"training_type": "video"}, "training_type"),
        ({"trigger": "x" * 200}, "trigger"),
        ({"settings": "steps=5"}, "settings"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_every_field_error_is_422_naming_the_field_and_writes_nothing(fal, bot, changes, field):
    response = bot.post("/api/v1/trainings", body(**changes), key="bad")

    assert response.status_code == 422, response.content
    answer = response.json()
    assert answer["error"] == "invalid" and field in answer["fields"], answer
    assert fal.submissions == []
    assert Avatar.objects.count() == Owner.objects.count() == IdempotencyKey.objects.count() == 0


def test_a_missing_field_is_named(fal, bot):
    data = body()
    del data["trigger"]
    del data["owner"]["telegram_id"]

    answer = bot.post("/api/v1/trainings", data, key="bad").json()

    assert {"trigger", "owner.telegram_id"} <= set(answer["fields"])


def test_a_body_that_is_not_json_is_400(fal, bot):
    response = bot.post("/api/v1/trainings", raw="{not json", key="bad")

    assert response.status_code in (400, 422)
    assert response.json()["error"] in ("bad_request", "invalid")
    assert Avatar.objects.count() == 0


def test_a_body_over_djangos_limit_is_413_not_500(fal, bot, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = bot.post("/api/v1/trainings", body(settings={"note": "x" * 2000}), key="big")

    assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert Avatar.objects.count() == 0


def test_bad_query_and_path_values_are_422(bot):
    for path, field in (
        ("/api/v1/avatars?status=flying", "query.status"),
        ("/api/v1/avatars?owner_telegram_id=x", "query.owner_telegram_id"),
        ("/api/v1/avatars?cursor=abc", "query.cursor"),
        ("/api/v1/avatars?limit=0", "query.limit"),
        ("/api/v1/avatars/abc", "path.avatar_id"),
    ):
        response = bot.get(path)
        assert response.status_code == 422, (path, response.content)
        assert field in response.json()["fields"], (path, response.json())


def test_answers_are_never_translated(bot):
    response = bot.post(
        "/api/v1/avatars/1/cancel", headers={"Accept-Language": "ru"}
    )  # no such avatar
    assert response.json()["detail"] == "No avatar with id 1."


# --- Reading ------------------------------------------------------------------------------


def test_get_avatar_has_the_fields_of_check_avatar_db_and_ids_as_strings(
    fal, bot, make_avatar, capsys
):
    fal.script(queue_seconds=600, queue_position=3)
    avatar = make_avatar()
    give(avatar, bot)
    bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="g-1")

    got = bot.get(f"/api/v1/avatars/{avatar.pk}").json()
    call_command("check_avatar_db", "--json")
    [row] = json.loads(capsys.readouterr().out)

    for name in (
        "id",
        "name",
        "status",
        "fal_status",
        "fal_request_id",
        "lora_url",
        "config_url",
        "error",
        "stuck",
        "owner_telegram_id",
        "created_at",
        "finished_at",
    ):
        assert got[name] == row[name], name
    assert isinstance(got["owner_telegram_id"], str)
    assert got["fal_status"] == FalStatus.IN_QUEUE and got["queue_position"] == 3
    assert [t["attempt"] for t in got["trainings"]] == [1]


def test_the_list_filters_by_owner_and_status_and_pages_with_a_cursor(bot, make_avatar, owner):
    mine = [make_avatar(owner=owner) for _ in range(3)]
    others = make_avatar()  # someone else's
    draft = make_avatar(owner=owner, ready=False)
    for avatar in (*mine, others, draft):
        give(avatar, bot)

    first = bot.get(
        "/api/v1/avatars",
        owner_telegram_id=owner.telegram_id,
        status="ready_for_training",
        limit=2,
    ).json()
    second = bot.get(
        "/api/v1/avatars",
        owner_telegram_id=owner.telegram_id,
        status="ready_for_training",
        limit=2,
        cursor=first["next_cursor"],
    ).json()

    assert [a["id"] for a in first["items"]] == [str(mine[2].pk), str(mine[1].pk)]
    assert [a["id"] for a in second["items"]] == [str(mine[0].pk)]
    assert second["next_cursor"] is None


# --- Cancelling -----------------------------------------------------------------------------


def test_cancel_is_202_when_sent_to_fal_and_409_without_an_active_training(fal, bot, make_avatar):
    fal.script(queue_seconds=600)
    avatar = make_avatar()
    give(avatar, bot)
    idle = bot.post(f"/api/v1/avatars/{avatar.pk}/cancel")
    bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="cancel-me")

    response = bot.post(f"/api/v1/avatars/{avatar.pk}/cancel")

    assert idle.status_code == 409 and idle.json()["error"] == "no_active_training"
    assert response.status_code == 202, response.content
    assert response.json()["cancel"] == "requested"
    request_id = response.json()["avatar"]["fal_request_id"]
    assert fal.cancel_calls[request_id] == 1
    run_check()
    assert bot.get(f"/api/v1/avatars/{avatar.pk}").json()["status"] == "cancelled"

    # "You can start it again whenever you like", as the owner was told: a new attempt.
    again = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="after-cancel")
    assert again.status_code == 201, again.content
    assert again.json()["training"]["attempt"] == 2
    assert again.json()["avatar"]["status"] == "training"


# --- Adopt ----------------------------------------------------------------------------------


def test_adopting_a_fal_request_is_idempotent_on_its_request_id(fal, bot):
    request_id, endpoint = submitted_elsewhere(fal)
    adopt_body = {
        "request_id": request_id,
        "endpoint": endpoint,
        "owner": {"telegram_id": 777},
        "name": "Adopted",
    }

    first = bot.post("/api/v1/trainings/adopt", adopt_body)
    again = bot.post("/api/v1/trainings/adopt", adopt_body)
    unknown = bot.post("/api/v1/trainings/adopt", {**adopt_body, "request_id": "no-such"})

    assert first.status_code == 201, first.content
    assert first.json()["adopted"] is True
    assert first.json()["training"]["fal_request_id"] == request_id
    assert again.status_code == 200 and again.json()["adopted"] is False
    assert again.json()["avatar"]["id"] == first.json()["avatar"]["id"]
    assert unknown.status_code == 422 and unknown.json()["error"] == "adopt_refused"
    assert len(fal.submissions) == 1  # only the submit made elsewhere
    assert (
        ClientAvatar.objects.get(avatar_id=int(first.json()["avatar"]["id"])).client == bot.client
    )


def submitted_elsewhere(fal) -> tuple[str, str]:
    """A training submitted to fal by someone else (the old bot): straight to the queue."""
    import httpx

    endpoint = "fal-ai/flux-lora-portrait-trainer"
    response = httpx.post(
        f"https://{fal.host}/{endpoint}",
        json={"images_data_url": "https://example.com/a.zip", "trigger_phrase": "ohwx"},
        headers={"Authorization": "Key test-key-id:test-key-secret-value"},
        verify=fal.ca_bundle,
    )
    response.raise_for_status()
    return response.json()["request_id"], endpoint


# --- The document ---------------------------------------------------------------------------


def test_the_openapi_document_validates_and_lists_every_endpoint():
    from openapi_spec_validator import validate

    response = Client().get("/api/v1/openapi.json")
    document = response.json()
    validate(document)
    operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post")
    }
    expected = {
        ("POST", "/api/v1/trainings"),
        ("POST", "/api/v1/avatars/{avatar_id}/trainings"),
        ("GET", "/api/v1/avatars/{avatar_id}"),
        ("GET", "/api/v1/avatars"),
        ("POST", "/api/v1/avatars/{avatar_id}/cancel"),
        ("GET", "/api/v1/quote"),
    }
    expected.add(("POST", "/api/v1/trainings/adopt"))
    assert operations == expected
    docs = Client().get("/api/v1/docs")
    assert docs.status_code == 200
    assert b"swagger-ui-bundle.js" in docs.content and b"cdn." not in docs.content


# --- The command ----------------------------------------------------------------------------


def test_create_api_client_prints_the_token_once_and_it_works(capsys, make_avatar):
    call_command(
        "create_api_client",
        "--name",
        "telegram bot",
        "--scopes",
        "trainings:write,avatars:read",
        "--callback-url",
        "https://bot.example.com/hooks",
        "--json",
    )
    printed = json.loads(capsys.readouterr().out)
    avatar = make_avatar()
    give(avatar, ApiClient.objects.get(name="telegram bot"))

    assert printed["name"] == "telegram bot"
    assert printed["callback_secret"].startswith("whsec_")
    stored = ApiClient.objects.get(name="telegram bot")
    assert stored.scopes == ["avatars:read", "trainings:write"]
    assert printed["token"] not in stored.token_hash
    response = Client().get(
        f"/api/v1/avatars/{avatar.pk}", headers={"Authorization": f"Bearer {printed['token']}"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--scopes", "avatars:write"], "unknown scope"),
        (["--scopes", "avatars:read", "--callback-url", "http://bot.example.com/"], "https"),
        (["--scopes", "avatars:read", "--callback-url", "https://10.0.0.5/"], "not a public"),
    ],
)
def test_create_api_client_refuses_bad_input_and_creates_nothing(arguments, message):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=message):
        call_command("create_api_client", "--name", "x", *arguments)
    assert ApiClient.objects.count() == 0
