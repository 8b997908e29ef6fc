"""The relay: a thread in each notifications worker, one at a time under a lease, that
hands every due outbox row to a sender within seconds.
See docs/operations.md#pace-messages-and-checks-after-a-disturbance.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone
from django_q.conf import Conf

from notifications import delivery
from notifications.models import SenderState

logger = logging.getLogger("notifications")

RELAY_LEASE = timedelta(seconds=2)
BACKLOG_POLL = 0.1  # seconds between passes while each pass finds work

_started_in: int | None = None
_lock = threading.Lock()


def take_turn(me: str) -> bool:
    """Hold (or renew) the relay lease; False while another relay holds it."""
    SenderState.get()
    now = timezone.now()
    return bool(
        SenderState.objects.filter(pk=1)
        .filter(Q(relay_until__isnull=True) | Q(relay_until__lt=now) | Q(relay_owner=me))
        .update(relay_owner=me, relay_until=now + RELAY_LEASE)
    )


# The other outboxes' passes (the bot's event callbacks), registered by their apps.
_other_outboxes: list[Callable[[], int]] = []


def register(relay_once: Callable[[], int]) -> None:
    if relay_once not in _other_outboxes:
        _other_outboxes.append(relay_once)


def run() -> None:
    """The loop; one failed pass (database restarting, say) never ends it."""
    me = delivery.worker_name()
    logger.info("Notification relay started in %s", me)
    wait = settings.NOTIFICATION_RELAY_POLL_SECONDS
    while True:
        time.sleep(wait)
        try:
            close_old_connections()
            queued = take_turn(me) and (
                delivery.relay_once() + sum(relay_once() for relay_once in _other_outboxes)
            )
            # While a backlog drains, top the queue up as soon as it has room.
            wait = BACKLOG_POLL if queued else settings.NOTIFICATION_RELAY_POLL_SECONDS
        except Exception:
            wait = settings.NOTIFICATION_RELAY_POLL_SECONDS
            logger.exception("Notification relay pass failed; trying again")


def start_in_notification_worker(sender: object = None, **kwargs: object) -> None:
    """``post_spawn`` receiver: the relay thread, once per notifications worker process."""
    global _started_in
    if Conf.CLUSTER_NAME != settings.NOTIFICATION_CLUSTER:
        return
    with _lock:
        if _started_in == os.getpid():
            return
        _started_in = os.getpid()
    threading.Thread(target=run, name="notification-relay", daemon=True).start()
