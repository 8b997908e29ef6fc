"""Where messages go, chosen like Django's email backends (settings.NOTIFICATION_BACKEND):
``telegram``, ``console`` (the default without a token) or ``locmem`` (tests).
"""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from notifications.backends.base import BaseBackend


def get_backend() -> BaseBackend:
    """A fresh backend per call: nothing (no HTTP client, no event loop) outlives a send."""
    return import_string(settings.NOTIFICATION_BACKEND)()
