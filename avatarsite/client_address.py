"""The client's address, one rule for every per-address decision: behind a proxy of
``FORWARDED_ALLOW_IPS``, the **last** hop of ``X-Forwarded-For`` (earlier hops are whatever
the client chose to send).
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
    if (remote := _address(request.META.get("REMOTE_ADDR", ""))) is None:
        return None
    if any(remote in network for network in settings.FORWARDED_ALLOW_IPS):
        hops = [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop]
        forwarded = _address(hops[-1]) if hops else None
        if forwarded is not None:
            return str(forwarded)
    return str(remote)
