"""Telegram's sending limits, shared by every worker process through the database.

At most one message per second to a chat, 20 per minute to a group chat (negative
ids), and 25 per second overall, evenly spaced (Telegram allows about 30; we keep a margin). A
worker reserves a slot before it calls Telegram; the reservation is a row in
``RateLimitMark``, taken under a row lock on the ``SenderState`` singleton so two
processes never both see the same free slot. Nothing is held in process memory,
so the limits hold across any number of workers and restarts.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from notifications.models import RateLimitMark, SenderState

# Marks older than the longest window are useless; keep a little more for the admin.
_KEEP = timedelta(seconds=75)


def is_group(chat_id: int) -> bool:
    """Groups and supergroups have negative ids; users (private chats) positive ones."""
    return chat_id < 0


def reserve(chat_id: int, *, now: datetime | None = None) -> float:
    """Take a send slot for ``chat_id`` now (returns 0.0) or say how many seconds to wait."""
    SenderState.get()  # the lock row must exist before we can lock it
    with transaction.atomic():
        SenderState.objects.select_for_update().filter(pk=1).first()
        now = now or timezone.now()
        wait = _wait_needed(chat_id, now)
        if wait > 0:
            return wait
        RateLimitMark.objects.create(chat_id=chat_id, sent_at=now)
        RateLimitMark.objects.filter(sent_at__lt=now - _KEEP).delete()
    return 0.0


def _wait_needed(chat_id: int, now: datetime) -> float:
    waits = [0.0]
    per_chat = timedelta(seconds=settings.NOTIFICATION_RATE_PER_CHAT_SECONDS)
    last = (
        RateLimitMark.objects.filter(chat_id=chat_id, sent_at__gt=now - per_chat)
        .order_by("-sent_at")
        .values_list("sent_at", flat=True)
        .first()
    )
    if last is not None:
        waits.append((last + per_chat - now).total_seconds())

    if is_group(chat_id):
        waits.append(
            _window_wait(
                RateLimitMark.objects.filter(chat_id=chat_id),
                now,
                timedelta(minutes=1),
                settings.NOTIFICATION_RATE_GROUP_PER_MINUTE,
            )
        )
    # Overall: evenly spaced (1/limit s apart) rather than bursts of ``limit`` at the
    # start of each second, so that network jitter cannot bunch two bursts into one
    # second at Telegram's end; the window check below is the hard ceiling.
    spacing = timedelta(seconds=1 / settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND)
    latest = (
        RateLimitMark.objects.filter(sent_at__gt=now - spacing)
        .order_by("-sent_at")
        .values_list("sent_at", flat=True)
        .first()
    )
    if latest is not None:
        waits.append((latest + spacing - now).total_seconds())
    waits.append(
        _window_wait(
            RateLimitMark.objects.all(),
            now,
            timedelta(seconds=1),
            settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND,
        )
    )
    return max(waits)


def _window_wait(marks, now: datetime, window: timedelta, limit: int) -> float:
    """Seconds until the window holds fewer than ``limit`` marks (0.0 if it already does)."""
    recent = list(
        marks.filter(sent_at__gt=now - window)
        .order_by("-sent_at")
        .values_list("sent_at", flat=True)[:limit]
    )
    if len(recent) < limit:
        return 0.0
    # The limit-th newest mark has to leave the window before another send fits.
    return max(0.0, (recent[-1] + window - now).total_seconds())
