"""The admin login is rate-limited (django-axes) per client address and per username.

The client address is ``avatarsite.client_address`` (the last X-Forwarded-For hop
behind a trusted proxy), so one lockout never blocks every staff member behind the
proxy and a client cannot pick its own address with a forged first hop.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

LOGIN = reverse("admin:login")
PASSWORD = "correct-horse-battery-staple"
PROXY = "127.0.0.1"  # in FORWARDED_ALLOW_IPS by default


@pytest.fixture
def staff(db):
    for name in ("alice", "bob", "carol"):
        User.objects.create_user(name, password=PASSWORD, is_staff=True, is_superuser=True)


def log_in(username: str, password: str, *, address: str = "198.51.100.7", forwarded: str = ""):
    """One login attempt from a fresh browser; returns (response, logged in?)."""
    client = (
        Client(REMOTE_ADDR=address, HTTP_X_FORWARDED_FOR=forwarded)
        if forwarded
        else Client(REMOTE_ADDR=address)
    )
    response = client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})
    return response, "_auth_user_id" in client.session


def fail(times: int, username: str = "alice", **where) -> list:
    return [log_in(username, "wrong-password", **where)[0] for _ in range(times)]


def test_the_fifth_failure_locks_and_then_even_the_right_password_is_refused(staff, settings):
    assert settings.AXES_FAILURE_LIMIT == settings.ADMIN_LOGIN_FAILURE_LIMIT == 5

    answers = fail(5)

    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429]
    page = answers[-1].content.decode()
    assert 'id="login-locked"' in page
    assert "locked after 5 failures" in page and "15 minutes" in page
    assert "axes_reset_username" in page
    response, logged_in = log_in("alice", PASSWORD)
    assert response.status_code == 429 and not logged_in


def test_a_locked_username_is_refused_from_every_address(staff):
    fail(5, address="198.51.100.7")

    response, logged_in = log_in("alice", PASSWORD, address="203.0.113.99")

    assert response.status_code == 429 and not logged_in


def test_a_locked_address_is_refused_for_every_username(staff):
    for name in ("x1", "x2", "x3", "x4", "x5"):  # five names, one failure each
        log_in(name, "guess", address="198.51.100.7")

    response, logged_in = log_in("bob", PASSWORD, address="198.51.100.7")

    assert response.status_code == 429 and not logged_in
    _response, elsewhere = log_in("bob", PASSWORD, address="203.0.113.5")
    assert elsewhere


def test_behind_the_proxy_each_client_is_counted_by_its_own_address(staff):
    for name in ("x1", "x2", "x3", "x4", "x5"):
        log_in(name, "guess", address=PROXY, forwarded="203.0.113.66")

    # Another staff member behind the same proxy is not locked out...
    _response, logged_in = log_in("carol", PASSWORD, address=PROXY, forwarded="203.0.113.10")
    assert logged_in
    # ...and the locked client cannot escape by forging an earlier hop.
    response, escaped = log_in("bob", PASSWORD, address=PROXY, forwarded="10.9.8.7, 203.0.113.66")
    assert response.status_code == 429 and not escaped


def test_a_superuser_lifts_a_lockout_with_axes_reset_username(staff):
    fail(5)
    assert log_in("alice", PASSWORD, address="203.0.113.1")[0].status_code == 429

    call_command("axes_reset_username", "alice")

    assert log_in("alice", PASSWORD, address="203.0.113.1")[1]


def test_axes_reset_lifts_every_lockout(staff):
    fail(5, "alice", address="198.51.100.7")
    fail(5, "bob", address="198.51.100.8")

    call_command("axes_reset")

    assert log_in("alice", PASSWORD, address="198.51.100.7")[1]
    assert log_in("bob", PASSWORD, address="198.51.100.8")[1]


def test_failures_below_the_limit_do_not_stop_the_right_password(staff):
    fail(4)

    _response, logged_in = log_in("alice", PASSWORD)

    assert logged_in
