"""Telling an owner, once, that their training takes longer than usual.

With the live progress messages on (``OWNER_PROGRESS_MESSAGES``) that message says it;
with them off, the periodic check writes one plain message when a training attempt is
still running ``OWNER_DELAY_MESSAGE_MINUTES`` after it started; an automatic retry
belongs to the same episode and is not announced again. The outbox's dedup key (avatar, first attempt of the episode) makes
it once whatever runs the check. See docs/owner-messages.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings

from monitoring.models import FalStatus, Training
from notifications import outbox
from notifications.models import Notification

ON_FAL = (FalStatus.IN_QUEUE, FalStatus.IN_PROGRESS)


def _wanted() -> bool:
    # The progress messages (another feature's setting) tell the owner themselves.
    return not getattr(settings, "OWNER_PROGRESS_MESSAGES", True)


def review(trainings: Iterable[Training], now: datetime) -> int:
    """Queue the message for the active trainings (just checked) past the limit; how many."""
    if not _wanted():
        return 0
    limit = now - timedelta(minutes=settings.OWNER_DELAY_MESSAGE_MINUTES)
    # An episode is at least as old as its current attempt: the common case (a young
    # attempt) costs no query.
    # Only attempts fal has taken: a held or still-submitting start tells the owner
    # nothing until it really starts (counted from then).
    late = [
        t
        for t in trainings
        if t.finished_at is None
        and t.fal_status in ON_FAL
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
        if keys[training.pk] in told:
            continue
        if outbox.queue_delayed(training=training, episode_start_id=starts[training.pk].pk):
            queued += 1
    return queued
