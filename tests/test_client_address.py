from __future__ import annotations

import pytest
from django.test import RequestFactory

from avatarsite.client_address import client_address


@pytest.fixture
def request_from():
    def build(remote: str, forwarded: str | None = None):
        extra = {"REMOTE_ADDR": remote}
        if forwarded is not None:
            extra["HTTP_X_FORWARDED_FOR"] = forwarded
        return RequestFactory().get("/", **extra)

    return build


def test_a_direct_client_is_its_remote_address(request_from):
    assert client_address(request_from("203.0.113.9", "1.2.3.4")) == "203.0.113.9"


def test_behind_a_trusted_proxy_the_client_is_the_last_forwarded_hop(request_from, settings):
    # The first hop is whatever the client sent; only the last was added by our proxy.
    assert client_address(request_from("127.0.0.1", "6.6.6.6, 198.51.100.7")) == "198.51.100.7"


def test_a_trusted_proxy_without_a_usable_hop_is_itself(request_from):
    assert client_address(request_from("127.0.0.1", "not-an-ip")) == "127.0.0.1"
    assert client_address(request_from("127.0.0.1")) == "127.0.0.1"


def test_networks_are_accepted_as_trusted_proxies(request_from, settings):
    import ipaddress

    settings.FORWARDED_ALLOW_IPS = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address(request_from("10.1.2.3", "198.51.100.7")) == "198.51.100.7"
    assert client_address(request_from("127.0.0.1", "198.51.100.7")) == "127.0.0.1"


def test_a_garbage_remote_address_is_none(request_from):
    assert client_address(request_from("")) is None
