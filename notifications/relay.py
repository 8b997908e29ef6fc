"""The relay: a thread in each notifications worker, one at a time under a lease, that
hands every due outbox row to a sender within seconds.
See docs/operations.md#pace-messages-and-checks-after-a-disturbance.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
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


def tick(me: str) -> int:
    """One pass: queue what is due, if it is this relay's turn. Returns how many."""
    if not take_turn(me):
        return 0
    return delivery.relay_once() + sum(relay_once() for relay_once in _other_outboxes)


def run(stop: threading.Event) -> None:
    """The loop; one failed pass (database restarting, say) never ends it."""
    me = delivery.worker_name()
    logger.info("Notification relay started in %s", me)
    try:
        wait = settings.NOTIFICATION_RELAY_POLL_SECONDS
        while not stop.wait(wait):
            try:
                close_old_connections()
                # While a backlog drains, top the queue up as soon as it has room.
                wait = BACKLOG_POLL if tick(me) else settings.NOTIFICATION_RELAY_POLL_SECONDS
            except Exception:
                wait = settings.NOTIFICATION_RELAY_POLL_SECONDS
                logger.exception("Notification relay pass failed; trying again")
    finally:
        connection.close()


def start() -> threading.Thread | None:
    """Start the relay thread in this process, once (after a fork, again in the child)."""
    global _started_in
    with _lock:
        if _started_in == os.getpid():
            return None
        _started_in = os.getpid()
    thread = threading.Thread(
        target=run, args=(threading.Event(),), name="notification-relay", daemon=True
    )
    thread.start()
    return thread


def start_in_notification_worker(sender: object = None, **kwargs: object) -> None:
    """``post_spawn`` receiver: only the notifications cluster's workers relay."""
    if Conf.CLUSTER_NAME == settings.NOTIFICATION_CLUSTER:
        start()
