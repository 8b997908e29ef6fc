"""The admin login is rate-limited (django-axes) per (client address, username) pair, and
per address with a higher limit (avatarsite.login_lockout).

A stranger who knows a staff member's username cannot lock them out: failures lock
the pair, so the real user logging in from elsewhere is never refused (issue 30).
Spraying many usernames from one address meets the per-address limit. The client
address is ``avatarsite.client_address`` (the last X-Forwarded-For hop behind a
trusted proxy), so one lockout never blocks every staff member behind the proxy and a
client cannot pick its own address with a forged first hop.
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
    assert "this username from this address" in page and "after 5 failures" in page
    assert "15 minutes" in page and "another address is not affected" in page
    assert "axes_reset_username" in page and "198.51.100.7" in page
    response, logged_in = log_in("alice", PASSWORD)
    assert response.status_code == 429 and not logged_in


def test_a_stranger_failing_for_a_username_never_locks_its_owner_out_elsewhere(staff):
    for _episode in range(3):  # renewed as often as the stranger likes
        fail(5, address="198.51.100.7")

        response, logged_in = log_in("alice", PASSWORD, address="203.0.113.99")

        assert response.status_code == 302 and logged_in
    # The stranger's own address stays locked for that username, and only for it.
    assert log_in("alice", PASSWORD, address="198.51.100.7")[0].status_code == 429
    assert log_in("bob", PASSWORD, address="198.51.100.7")[1]


def test_spraying_many_usernames_from_one_address_meets_the_address_limit(staff, settings):
    settings.ADMIN_LOGIN_ADDRESS_FAILURE_LIMIT = 12
    assert settings.ADMIN_LOGIN_ADDRESS_FAILURE_LIMIT > settings.AXES_FAILURE_LIMIT
    for index in range(11):  # eleven names, one failure each: below both limits
        log_in(f"x{index}", "guess", address="198.51.100.7")
    assert log_in("carol", PASSWORD, address="198.51.100.7")[1]

    answer, _ = log_in("x11", "guess", address="198.51.100.7")  # the twelfth failure

    assert answer.status_code == 429
    page = answer.content.decode()
    assert "from this address (12, whatever the username)" in page and "axes_reset_ip" in page
    response, logged_in = log_in("bob", PASSWORD, address="198.51.100.7")
    assert response.status_code == 429 and not logged_in
    _response, elsewhere = log_in("bob", PASSWORD, address="203.0.113.5")
    assert elsewhere
    call_command("axes_reset_ip", "198.51.100.7")
    assert log_in("bob", PASSWORD, address="198.51.100.7")[1]


def test_the_address_limit_defaults_higher_than_the_pair_limit(settings):
    assert settings.ADMIN_LOGIN_ADDRESS_FAILURE_LIMIT == 30 > settings.AXES_FAILURE_LIMIT


def test_behind_the_proxy_each_client_is_counted_by_its_own_address(staff, settings):
    settings.ADMIN_LOGIN_ADDRESS_FAILURE_LIMIT = 5
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
    assert log_in("alice", PASSWORD)[0].status_code == 429

    call_command("axes_reset_username", "alice")

    assert log_in("alice", PASSWORD)[1]


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
