"""The client's address, by one rule for every per-address decision in the project.

Behind our reverse proxy ``REMOTE_ADDR`` is the proxy. When it is one of
``FORWARDED_ALLOW_IPS``, the client is the **last** hop of ``X-Forwarded-For``: the
address the proxy itself saw. Earlier hops are whatever the client chose to send, so
believing them would let anyone pick the address a lockout or an allow-list sees.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_address(request: HttpRequest) -> str | None:
    """The client's IP address as text, or None when nothing usable was given."""
    remote = _address(request.META.get("REMOTE_ADDR", ""))
    if remote is None:
        return None
    if any(remote in network for network in settings.FORWARDED_ALLOW_IPS):
        hops = [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop]
        forwarded = _address(hops[-1]) if hops else None
        if forwarded is not None:
            return str(forwarded)
    return str(remote)
