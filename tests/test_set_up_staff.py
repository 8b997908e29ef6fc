"""``set_up_staff``: the first superuser, the groups and the bot's client in one command."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError

from monitoring import roles
from monitoring.api import tokens
from monitoring.api.models import ApiClient

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("set_up_staff", *args, stdout=out)
    return out.getvalue()


def test_one_command_makes_the_superuser_the_groups_and_the_bots_client(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a-long-and-unusual-passphrase-31")
    Group.objects.filter(name=roles.SUPPORT).delete()

    out = run("--username", "admin", "--email", "admin@example.com", "--bot-client", "bot")

    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("a-long-and-unusual-passphrase-31")
    assert set(Group.objects.values_list("name", flat=True)) >= {roles.SUPPORT, roles.OPERATORS}
    assert Group.objects.get(name=roles.SUPPORT).permissions.exists()
    client = ApiClient.objects.get(name="bot")
    assert set(client.scopes) == {"trainings:write", "avatars:read"}
    [token] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Token")]
    assert tokens.authenticate(token) == client
    assert "a-long-and-unusual-passphrase-31" not in out

    again = run("--username", "admin", "--bot-client", "bot")
    assert "exists already: kept" in again and "Token" not in again
    assert ApiClient.objects.count() == 1 and User.objects.count() == 1


def test_a_weak_or_missing_password_is_refused_and_creates_nobody(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "123")
    with pytest.raises(CommandError, match="password was refused"):
        run("--username", "admin")
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_PASSWORD"):
        run("--username", "admin")
    assert not User.objects.filter(username="admin").exists()
