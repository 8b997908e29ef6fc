"""Telling an owner, once, that their training takes longer than usual: with the live
progress messages off (``OWNER_PROGRESS_MESSAGES``), one plain message per episode (the
outbox's dedup key: avatar, first attempt). See docs/owner-messages.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings

from monitoring.models import FalStatus, Training
from notifications import outbox
from notifications.models import Notification


def review(trainings: Iterable[Training], now: datetime) -> int:
    """Queue the message for the active trainings (just checked) past the limit; how many."""
    if settings.OWNER_PROGRESS_MESSAGES:
        return 0
    limit = now - timedelta(minutes=settings.OWNER_DELAY_MESSAGE_MINUTES)
    # An episode is at least as old as its current attempt: a young one costs no query.
    # Only attempts fal has taken: a held or submitting start tells the owner nothing.
    late = [
        t
        for t in trainings
        if t.finished_at is None
        and t.fal_status in (FalStatus.IN_QUEUE, FalStatus.IN_PROGRESS)
        and (t.submitted_at or t.created_at or now) <= limit
    ]
    if not late:
        return 0
    # The first attempt of the episode (an automatic retry is not announced again).
    starts = {t.pk: t.episode()[-1] for t in late}
    keys = {t.pk: outbox.delayed_key(t.avatar_id, starts[t.pk].pk) for t in late}
    told = set(
        Notification.objects.filter(dedup_key__in=keys.values()).values_list("dedup_key", flat=True)
    )
    queued = 0
    for training in late:
        start = starts[training.pk]
        if keys[training.pk] not in told and outbox.queue_delayed(
            training=training, episode_start_id=start.pk
        ):
            queued += 1
    return queued
