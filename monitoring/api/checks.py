"""System checks of the bot API's settings (ids ``api.W00x``)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security)
def check_callback_networks(app_configs=None, **kwargs):
    if settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS and not settings.DEBUG:
        return [
            Warning(
                "EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS is on: event callbacks may be sent "
                "over plain http and to loopback or private addresses of this network.",
                hint="Leave it off in production; it is meant for tests and local runs.",
                id="api.W001",
            )
        ]
    return []
