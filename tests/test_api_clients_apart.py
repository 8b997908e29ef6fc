"""Bot API clients are kept apart (issue 30, finding 3).

A client reads, lists, cancels and retrains only the avatars it created, started or
adopted: another client's avatar, or one made by staff, is a 404 like an unknown id,
and nothing reaches fal. The ``avatars:all`` scope, granted by staff, gives every one.
"""

from __future__ import annotations

import uuid

import pytest

from monitoring.api.models import ApiClient, ClientAvatar
from monitoring.models import Avatar, AvatarStatus, Owner
from tests.api_support import body, run_check

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(make_api_client):
    return make_api_client(name="alice")


@pytest.fixture
def bob(make_api_client):
    return make_api_client(name="bob")


def create(session, **changes) -> dict:
    response = session.post("/api/v1/trainings", body(**changes), key=uuid.uuid4().hex)
    assert response.status_code == 201, response.content
    return response.json()


def test_a_client_reads_and_lists_only_its_own_avatars(fal, alice, bob, make_avatar):
    fal.script(queue_seconds=600)
    mine = create(alice)["avatar"]["id"]
    theirs = create(bob, owner={"telegram_id": 777000111})["avatar"]["id"]
    staffs = make_avatar().pk

    assert alice.get(f"/api/v1/avatars/{mine}").status_code == 200
    for other in (theirs, staffs):
        response = alice.get(f"/api/v1/avatars/{other}")
        assert response.status_code == 404, response.content
        assert response.json()["error"] == "not_found"
        # Exactly what an id that does not exist answers: ids say nothing.
        assert response.json()["detail"] == f"No avatar with id {other}."
    listed = alice.get("/api/v1/avatars", limit=200).json()["items"]
    assert [item["id"] for item in listed] == [mine]
    assert alice.get("/api/v1/avatars", owner_telegram_id=777000111).json()["items"] == []


def test_a_client_cannot_cancel_or_retrain_another_clients_avatar(fal, alice, bob):
    fal.script(queue_seconds=600)
    running = create(bob)
    failing = create(bob, images_url="https://example.com/fail.zip")
    fal.finish(failing["training"]["fal_request_id"], error="No faces", error_type="x")
    run_check()
    assert Avatar.objects.get(pk=failing["avatar"]["id"]).status == AvatarStatus.ERROR
    submits = len(fal.submissions)

    cancel = alice.post(f"/api/v1/avatars/{running['avatar']['id']}/cancel")
    retrain = alice.post(f"/api/v1/avatars/{failing['avatar']['id']}/trainings", key="r-1")

    assert cancel.status_code == 404 and retrain.status_code == 404
    assert not fal.cancel_calls  # fal was never asked to cancel bob's training
    assert len(fal.submissions) == submits  # nor to train bob's avatar again (paid)
    assert Avatar.objects.get(pk=failing["avatar"]["id"]).status == AvatarStatus.ERROR
    assert Avatar.objects.get(pk=running["avatar"]["id"]).status == AvatarStatus.TRAINING
    # ...while bob can do both.
    assert bob.post(f"/api/v1/avatars/{running['avatar']['id']}/cancel").status_code == 202
    assert (
        bob.post(f"/api/v1/avatars/{failing['avatar']['id']}/trainings", key="r-1").status_code
        == 201
    )


def test_a_client_cannot_start_an_avatar_made_by_staff(fal, alice, make_avatar):
    avatar = make_avatar()

    response = alice.post(f"/api/v1/avatars/{avatar.pk}/trainings", key="s-1")

    assert response.status_code == 404
    assert fal.submissions == []
    assert not ClientAvatar.objects.filter(avatar=avatar).exists()  # still no client's


def test_the_avatars_all_scope_gives_every_avatar(fal, make_api_client, bob, make_avatar):
    fal.script(queue_seconds=600)
    everything = make_api_client(
        name="ops", scopes=("trainings:write", "avatars:read", "avatars:all")
    )
    theirs = create(bob)["avatar"]["id"]
    staffs = make_avatar().pk

    assert everything.get(f"/api/v1/avatars/{theirs}").status_code == 200
    assert everything.get(f"/api/v1/avatars/{staffs}").status_code == 200
    listed = {item["id"] for item in everything.get("/api/v1/avatars").json()["items"]}
    assert listed == {theirs, str(staffs)}
    assert everything.post(f"/api/v1/avatars/{theirs}/cancel").status_code == 202
    # Bob keeps his avatar and its events.
    assert ClientAvatar.objects.get(avatar_id=theirs).client == bob.client


def test_adopting_a_request_another_client_follows_is_a_404_and_changes_nothing(fal, alice, bob):
    fal.script(queue_seconds=600)
    started = create(bob)
    owner = Owner.objects.get(telegram_id=started["avatar"]["owner_telegram_id"])

    response = alice.post(
        "/api/v1/trainings/adopt",
        {
            "request_id": started["training"]["fal_request_id"],
            "endpoint": started["training"]["endpoint"],
            "owner": {"telegram_id": owner.telegram_id, "username": "someone_else"},
            "name": "Stolen",
        },
    )

    assert response.status_code == 404, response.content
    assert started["avatar"]["id"] not in response.content.decode()
    assert ClientAvatar.objects.get(avatar_id=started["avatar"]["id"]).client == bob.client
    owner.refresh_from_db()
    assert owner.username != "someone_else"


def test_staff_grant_the_scope_in_the_admin_and_see_it(admin_client, alice):
    page = admin_client.get(f"/admin/api/apiclient/{alice.client.pk}/change/").content.decode()
    assert 'value="avatars:all"' in page

    admin_client.post(
        f"/admin/api/apiclient/{alice.client.pk}/change/",
        {
            "name": "alice",
            "scopes": ["trainings:write", "avatars:read", "avatars:all"],
            "callback_url": "",
        },
    )

    assert "avatars:all" in ApiClient.objects.get(pk=alice.client.pk).scopes
    assert "avatars:all" in admin_client.get("/admin/api/apiclient/").content.decode()
