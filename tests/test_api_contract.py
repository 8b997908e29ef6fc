"""The API never guesses and says what it does (issue 31, points 4 and 5).

Unknown query parameters are refused, every answer under /api/ is JSON with a request
id, ids go both ways as documented, the avatar gives back what was sent, replays are
marked, and the OpenAPI document describes the callbacks with an example that the
``standardwebhooks`` package verifies.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import jsonschema
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from monitoring.api import callbacks, middleware
from monitoring.api.models import ApiCall, EventCallback
from monitoring.models import Avatar, Owner, Training
from tests.api_support import body, give, run_check

pytestmark = pytest.mark.django_db


def start(bot, fal, **changes) -> dict:
    response = bot.post("/api/v1/trainings", body(**changes), key=uuid.uuid4().hex)
    assert response.status_code == 201, response.content
    return response.json()


# --- Nothing is guessed -------------------------------------------------------------------


def test_unknown_query_parameters_are_400_naming_them(fal, bot, make_avatar):
    avatar = make_avatar()
    give(avatar, bot)

    listed = bot.get("/api/v1/avatars?state=completed&owner_username=anna&limit=5")
    one = bot.get(f"/api/v1/avatars/{avatar.pk}?expand=owner")
    posted = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings?dry_run=1", key="q-1")

    assert listed.status_code == 400, listed.content
    answer = listed.json()
    assert answer["error"] == "unknown_parameters"
    assert set(answer["fields"]) == {"query.state", "query.owner_username"}
    assert "state, owner_username" in answer["detail"] and "status" in answer["detail"]
    assert one.status_code == 400 and set(one.json()["fields"]) == {"query.expand"}
    assert posted.status_code == 400 and set(posted.json()["fields"]) == {"query.dry_run"}
    assert fal.submissions == []  # the refused start changed nothing
    assert bot.get("/api/v1/avatars?status=ready_for_training&limit=5").status_code == 200


def test_unknown_parameters_are_checked_after_the_token(bot):
    response = Client().get("/api/v1/avatars?state=completed")

    assert response.status_code == 401 and response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/api/v1/trainings/5", 404, "not_found"),
        ("get", "/api/v1/nothing/here", 404, "not_found"),
        ("get", "/api/v2/avatars", 404, "not_found"),
        ("get", "/api/v1/trainings", 405, "method_not_allowed"),
        ("delete", "/api/v1/avatars/1", 405, "method_not_allowed"),
    ],
)
def test_everything_under_api_answers_json(bot, method, path, status, code):
    response = getattr(bot.http, method)(path, headers={"Authorization": f"Bearer {bot.token}"})

    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"] == code and response.json()["detail"]
    assert response["X-Request-ID"]


def test_a_trailing_slash_makes_no_difference(bot, make_avatar):
    avatar = make_avatar()
    give(avatar, bot)

    with_slash = bot.get(f"/api/v1/avatars/{avatar.pk}/")
    listed = bot.get("/api/v1/avatars/?limit=1")
    root = Client().get("/api/v1/")

    assert with_slash.status_code == 200 and with_slash.json()["id"] == str(avatar.pk)
    assert listed.status_code == 200 and listed.json()["items"][0]["id"] == str(avatar.pk)
    assert root.status_code == 200
    assert root.json()["openapi"].endswith("/api/v1/openapi.json")
    assert bot.get("/api/v1/avatars/0/").json()["error"] == "not_found"
    recorded = ApiCall.objects.order_by("pk").values_list("path", flat=True)
    assert list(recorded)[:2] == [f"/api/v1/avatars/{avatar.pk}", "/api/v1/avatars"]


# --- Headers ------------------------------------------------------------------------------


def test_every_answer_carries_a_request_id_and_a_sane_one_is_kept(bot):
    ours = bot.get("/api/v1/avatars")
    again = bot.get("/api/v1/avatars")
    theirs = bot.get("/api/v1/avatars", headers={"X-Request-ID": "bot-7f3a:42"})
    odd = bot.get("/api/v1/avatars", headers={"X-Request-ID": "a b\u00e9" + "x" * 200})
    refused = Client().get("/api/v1/avatars/1")

    assert len(ours["X-Request-ID"]) == 32 and ours["X-Request-ID"] != again["X-Request-ID"]
    assert theirs["X-Request-ID"] == "bot-7f3a:42"
    assert odd["X-Request-ID"] != "" and " " not in odd["X-Request-ID"]
    assert refused.status_code == 401 and refused["X-Request-ID"]


def test_a_replayed_start_is_marked(fal, bot):
    first = bot.post("/api/v1/trainings", body(), key="replay-1")
    again = bot.post("/api/v1/trainings", body(), key="replay-1")

    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in first
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert len(fal.submissions) == 1


# --- Ids and what was sent ----------------------------------------------------------------


def test_ids_go_in_as_numbers_or_strings_and_come_back_as_strings(fal, bot):
    as_number = start(bot, fal, owner={"telegram_id": 555000111, "username": "@anna"})
    as_string = start(bot, fal, owner={"telegram_id": "555000111"})

    assert Owner.objects.count() == 1
    for answer in (as_number, as_string):
        owner = answer["avatar"]["owner"]
        assert owner == {"telegram_id": "555000111", "username": "anna", "language": "ru"}
    avatar_id = as_number["avatar"]["id"]
    assert isinstance(avatar_id, str) and isinstance(as_number["training"]["id"], str)
    listed = bot.get("/api/v1/avatars", owner_telegram_id="555000111").json()
    assert {a["id"] for a in listed["items"]} == {avatar_id, as_string["avatar"]["id"]}


@pytest.mark.parametrize("value", ["1e3", "12a", "", " 12", True, 12.5, "-5"])
def test_an_id_that_is_not_a_whole_number_is_422(fal, bot, value):
    response = bot.post(
        "/api/v1/trainings", body(owner={"telegram_id": value}), key=uuid.uuid4().hex
    )

    assert response.status_code == 422, (value, response.content)
    assert "owner.telegram_id" in response.json()["fields"]
    assert Avatar.objects.count() == 0


def test_the_avatar_gives_back_what_was_sent_and_the_clients_reference(fal, bot):
    answer = start(bot, fal, client_reference="order-1187")
    avatar_id = answer["avatar"]["id"]

    got = bot.get(f"/api/v1/avatars/{avatar_id}").json()
    found = bot.get("/api/v1/avatars", client_reference="order-1187").json()["items"]
    none = bot.get("/api/v1/avatars", client_reference="order-0").json()["items"]

    sent = body()
    assert got["trigger"] == sent["trigger"] and got["images_url"] == sent["images_url"]
    assert got["settings"] == sent["settings"]
    assert got["owner"]["username"] == "anna"
    assert got["client_reference"] == "order-1187" == answer["avatar"]["client_reference"]
    assert [a["id"] for a in found] == [avatar_id] and none == []


def test_a_reference_that_is_too_long_is_422(fal, bot):
    response = bot.post("/api/v1/trainings", body(client_reference="x" * 256), key="long")

    assert response.status_code == 422 and "client_reference" in response.json()["fields"]


def test_fal_status_is_cleared_when_the_training_ends(fal, bot):
    fal.script(queue_seconds=600, queue_position=2)
    queued = start(bot, fal)["avatar"]
    avatar_id = queued["id"]
    assert queued["fal_status"] == "IN_QUEUE"

    assert bot.post(f"/api/v1/avatars/{avatar_id}/cancel").status_code == 202
    run_check()
    got = bot.get(f"/api/v1/avatars/{avatar_id}").json()

    assert got["status"] == "cancelled"
    assert got["fal_status"] in (None, "COMPLETED")  # fal's own end, or nothing
    assert got["fal_status"] != "IN_QUEUE" and got["queue_position"] is None
    assert got["trainings"][0]["fal_status"] == got["fal_status"]
    assert not Training.objects.filter(fal_status__in=("IN_QUEUE", "IN_PROGRESS")).exists()


def test_a_completed_avatar_keeps_fals_completed(fal, bot):
    avatar_id = start(bot, fal)["avatar"]["id"]

    run_check()

    got = bot.get(f"/api/v1/avatars/{avatar_id}").json()
    assert got["status"] == "completed" and got["fal_status"] == "COMPLETED"


def test_reading_an_avatar_is_one_statement_besides_the_token_and_the_record(fal, bot):
    avatar_id = start(bot, fal)["avatar"]["id"]
    run_check()
    bot.get(f"/api/v1/avatars/{avatar_id}")  # last_used_at written: not again this minute

    with CaptureQueriesContext(connection) as queries:
        got = bot.get(f"/api/v1/avatars/{avatar_id}")

    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"].upper()]
    assert got.status_code == 200 and got.json()["files"] is not None
    assert len(statements) == 3, statements  # token and count, the avatar, the call log


# --- The document -------------------------------------------------------------------------


@pytest.fixture
def document() -> dict:
    return Client().get("/api/v1/openapi.json").json()


def test_the_document_describes_the_callbacks_with_a_verifiable_example(document):
    hooks = document["webhooks"]
    assert set(hooks) == {
        "avatar.completed",
        "avatar.failed",
        "avatar.cancelled",
        "avatar.stuck",
        "training.retried",
    }
    completed = hooks["avatar.completed"]["post"]
    headers = {p["name"] for p in completed["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert "Retries" in document["info"]["description"]
    [example] = completed["requestBody"]["content"]["application/json"]["examples"].values()
    secret = example["summary"].split("secret ")[1].split(";")[0]
    sent_headers = json.loads(example["summary"].split("headers: ", 1)[1])
    body_text = json.dumps(example["value"], ensure_ascii=False, separators=(",", ":"))

    event = Webhook(secret).verify(body_text, sent_headers)

    assert event["type"] == "avatar.completed" and event["data"]["status"] == "completed"
    jsonschema.validate(event, _event_schema(document))
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body_text.replace("completed", "failed", 1), sent_headers)


def test_a_real_callback_body_matches_the_documented_schema(fal, make_api_client, receiver):
    bot = make_api_client(callback_url=receiver.url)
    start(bot, fal, client_reference="order-9")
    run_check()
    [callback] = EventCallback.objects.all()
    callbacks.deliver(callback.pk)
    [sent] = receiver.requests
    headers = {name.lower(): value for name, value in sent["headers"].items()}
    document = Client().get("/api/v1/openapi.json").json()

    event = Webhook(bot.made.callback_secret).verify(sent["body"], headers)

    jsonschema.validate(event, _event_schema(document))
    assert event["data"]["client_reference"] == "order-9"


def _event_schema(document: dict) -> dict:
    return {"$ref": "#/components/schemas/Event", "components": document["components"]}


def test_a_body_that_is_not_json_answers_as_documented(bot, document):
    responses = document["paths"]["/api/v1/trainings"]["post"]["responses"]
    documented = responses["400"]["content"]["application/json"]["examples"]["bad_request"]

    response = bot.post("/api/v1/trainings", raw="{not json", key="not-json")

    assert response.status_code == 400
    assert response.json() == documented["value"]
    assert documented["value"]["detail"] == "The request body is not valid JSON."


def test_a_completed_avatar_refused_a_start_answers_as_documented(fal, bot, make_avatar, document):
    responses = document["paths"]["/api/v1/avatars/{avatar_id}/trainings"]["post"]["responses"]
    documented = responses["409"]["content"]["application/json"]["examples"]["not_startable"]
    avatar = make_avatar()
    give(avatar, bot)
    bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="done-1")
    run_check()

    response = bot.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="done-2")

    assert response.status_code == 409
    assert response.json() == documented["value"]
    assert "cancelled" in documented["value"]["detail"]


def test_each_operation_lists_its_own_errors_with_examples(document):
    paths = document["paths"]
    get_one = paths["/api/v1/avatars/{avatar_id}"]["get"]["responses"]
    start_new = paths["/api/v1/trainings"]["post"]["responses"]
    cancel = paths["/api/v1/avatars/{avatar_id}/cancel"]["post"]["responses"]

    assert {"401", "403", "404", "429"} <= set(get_one) and "409" not in get_one
    assert "404" not in start_new
    conflicts = start_new["409"]["content"]["application/json"]["examples"]
    assert {"key_reused", "in_progress", "not_startable"} <= set(conflicts)
    assert set(cancel["409"]["content"]["application/json"]["examples"]) == {
        "no_active_training",
        "not_cancelled",
    }
    assert "X-Request-ID" in get_one["200"]["headers"]
    assert "Idempotent-Replayed" in start_new["201"]["headers"]
    assert "Retry-After" in get_one["429"]["headers"]
    key = next(
        p
        for p in paths["/api/v1/trainings"]["post"]["parameters"]
        if p["name"] == "Idempotency-Key"
    )
    assert key["required"] and "Idempotent-Replayed" in key["description"]
    assert document["components"]["schemas"]["AvatarOut"]["examples"]
    owner_id = document["components"]["schemas"]["OwnerIn"]["properties"]["telegram_id"]
    assert {s["type"] for s in owner_id["oneOf"]} == {"integer", "string"}


# --- The call log -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_calls_are_written_by_the_background_thread_in_batches(
    make_api_client, make_avatar, settings
):
    settings.API_CALL_LOG_FLUSH_SECONDS = 0.2
    bot = make_api_client()
    avatar = make_avatar()
    give(avatar, bot)

    statuses = [bot.get(f"/api/v1/avatars/{avatar.pk}").status_code for _ in range(3)]
    statuses.append(bot.get("/api/v1/avatars/0").status_code)
    deadline = time.monotonic() + 10
    while ApiCall.objects.count() < 4 and time.monotonic() < deadline:
        time.sleep(0.05)

    recorded = list(ApiCall.objects.order_by("at", "pk").values_list("status", flat=True))
    assert statuses == [200, 200, 200, 404] and recorded == statuses
    assert middleware.pending(bot.client.pk, timezone.now() - timedelta(minutes=1)) == 0


@pytest.mark.django_db(transaction=True)
def test_the_rate_limit_counts_calls_not_written_yet(make_api_client, settings):
    settings.API_CALL_LOG_FLUSH_SECONDS = 3600  # nothing written while the calls are made
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    bot = make_api_client()

    statuses = [bot.get("/api/v1/avatars").status_code for _ in range(4)]
    unwritten = ApiCall.objects.count()
    written = middleware.flush()

    assert statuses == [200, 200, 200, 429]
    assert (unwritten, written, ApiCall.objects.count()) == (0, 4, 4)
