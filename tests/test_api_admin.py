"""API clients in the admin: Operators only, the token shown once, stored as a hash."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from monitoring.api.models import ApiClient
from monitoring.api.tokens import hash_token
from tests.api_support import give

pytestmark = pytest.mark.django_db


def staff(*perms: str) -> Client:
    user = User.objects.create_user("staffer", password="x", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    browser = Client()
    browser.force_login(user)
    return browser


def test_only_staff_with_manage_api_clients_see_or_add_clients(make_api_client):
    made = make_api_client()
    support = staff("monitoring.view_avatar", "monitoring.resend_notification")
    for url in (
        "/admin/api/apiclient/",
        "/admin/api/apiclient/add/",
        f"/admin/api/apiclient/{made.client.pk}/change/",
        "/admin/api/apicall/",
    ):
        assert support.get(url).status_code == 403, url
    assert b"/admin/api/apiclient/" not in support.get("/admin/").content

    User.objects.get(username="staffer").user_permissions.add(
        Permission.objects.get(codename="manage_api_clients")
    )
    assert support.get("/admin/api/apiclient/").status_code == 200


def test_adding_a_client_shows_its_token_once_and_keeps_only_the_hash(admin_client, make_avatar):
    response = admin_client.post(
        "/admin/api/apiclient/add/",
        {
            "name": "telegram bot",
            "scopes": ["trainings:write", "avatars:read"],
            "callback_url": "https://bot.example.com/hooks",
        },
    )

    assert response.status_code == 200, response.content
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    token = re.search(r'id="api-token">(atm_[^<]+)<', page).group(1)
    secret = re.search(r'id="api-callback-secret">(whsec_[^<]+)<', page).group(1)
    client = ApiClient.objects.get(name="telegram bot")
    assert client.token_hash == hash_token(token)
    assert client.callback_secret == secret
    for url in ("/admin/api/apiclient/", f"/admin/api/apiclient/{client.pk}/change/"):
        shown = admin_client.get(url).content.decode()
        assert token not in shown and secret not in shown and client.token_hash not in shown
    avatar = make_avatar()
    give(avatar, client)
    api = Client().get(f"/api/v1/avatars/{avatar.pk}", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 200


def test_a_plain_http_or_private_callback_url_is_refused_in_the_form(admin_client):
    for url in ("http://bot.example.com/hooks", "https://192.168.1.10/hooks"):
        response = admin_client.post(
            "/admin/api/apiclient/add/",
            {"name": "bot", "scopes": ["avatars:read"], "callback_url": url},
        )
        assert response.status_code == 200
        assert b"errorlist" in response.content
    assert ApiClient.objects.count() == 0


def test_revoking_a_client_makes_its_token_401(admin_client, make_api_client):
    made = make_api_client()

    admin_client.post(
        "/admin/api/apiclient/", {"action": "revoke", "_selected_action": [made.client.pk]}
    )

    assert made.get("/api/v1/avatars").status_code == 401
