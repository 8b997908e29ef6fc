"""Where messages go, chosen like Django's email backends (settings.NOTIFICATION_BACKEND).

``telegram`` sends through the Bot API, ``console`` prints (the default when no token
is set, so a first run works), ``locmem`` keeps messages in memory for tests.
Every backend answers ``send()`` with a receipt or one of the classified errors in
``notifications.backends.base``; the delivery module decides what each one means
for the outbox row.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from notifications.backends.base import BaseBackend


def get_backend() -> BaseBackend:
    """A fresh backend per call: nothing (no HTTP client, no event loop) outlives a send."""
    return import_string(settings.NOTIFICATION_BACKEND)()
