"""What the monitor tells the owner's live progress message (``notifications.progress``):
a training as a ``progress.Snapshot`` when fal accepts it, a check moves it, fal's
failure starts it again and it ends. See docs/eta.md. With those messages off
(``OWNER_PROGRESS_MESSAGES``), one plain "taking longer than usual" message per episode
instead (docs/owner-messages.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from monitoring import eta
from monitoring.models import EventSource, FalStatus, Training
from notifications import outbox, progress
from notifications.models import Notification

logger = logging.getLogger("monitoring")


def phase_of(training: Training) -> str:
    if training.eta_late:
        return "late"
    if training.fal_status in (FalStatus.IN_PROGRESS, FalStatus.COMPLETED):
        return "run"
    return "queue"


def snapshot(training: Training, *, phase: str | None = None) -> progress.Snapshot:
    """``training`` with its avatar and owner loaded."""
    avatar = training.avatar
    owner = avatar.owner
    return progress.Snapshot(
        training_id=training.pk,
        chat_id=owner.telegram_id,
        phase=phase or phase_of(training),
        context={
            "name": avatar.name,
            "language": owner.language,
            "owner_id": owner.pk,
            "avatar_id": avatar.pk,
        },
        position=training.queue_position,
        eta_at=training.eta_at,
        eta_low=training.eta_low,
        eta_high=training.eta_high,
    )


def on_submitted(sender: Any, *, training_id: int, source: str, **kwargs: Any) -> None:
    """fal accepted the job: its first estimate, and the owner's message (after commit)."""
    if source == EventSource.ADOPT:
        return  # an adopted job was started elsewhere: its owner was never ours to tell
    transaction.on_commit(lambda: accepted(training_id), robust=True)


def accepted(training_id: int) -> None:
    training = (
        Training.objects.active().select_related("avatar__owner").filter(pk=training_id).first()
    )
    if training is None:
        return
    key = eta.key_of(training.endpoint, training.arguments)  # its first estimate
    if eta.refresh(training, eta.load([key])[key], now=timezone.now()):
        Training.objects.filter(pk=training.pk, finished_at__isnull=True).update(
            **{name: getattr(training, name) for name in eta.FIELDS}
        )
    progress.update_many([snapshot(training)])


def checked(trainings: Iterable[Training]) -> None:
    """After a check batch: the trainings whose phase, position or estimate changed
    (as just written), their avatars and owners read in one query."""
    if not settings.OWNER_PROGRESS_MESSAGES:
        return
    by_id = {t.pk: t for t in trainings if t.finished_at is None}
    try:
        active = (
            Training.objects.active()
            .filter(pk__in=list(by_id))
            .select_related("avatar__owner")
            .only("avatar__name", "avatar__owner__telegram_id", "avatar__owner__language")
        )
        for found in active:
            by_id[found.pk].avatar = found.avatar
        progress.update_many([snapshot(by_id[found.pk]) for found in active])
    except Exception:  # the owner's progress must never fail a check
        logger.exception("Progress messages of %s trainings not updated", len(by_id))


def on_retried(sender: Any, *, training: Training, retry: Training, **kwargs: Any) -> None:
    """fal failed on its side and a new attempt starts: the same message says so."""
    retry.avatar = training.avatar
    progress.retried(training.pk, snapshot(retry, phase="retry"))


def on_finished(sender: Any, *, training: Training, outcome: str, **kwargs: Any) -> None:
    """The outcome is known: no more progress, only the last line after the outcome."""
    progress.finish(training.pk, outcome)


def review_delays(trainings: Iterable[Training], now: datetime) -> None:
    """Queue the delay message for the active trainings (just checked) past the limit,
    once per episode (the outbox's dedup key: avatar, first attempt)."""
    if settings.OWNER_PROGRESS_MESSAGES:
        return
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
    # The first attempt of the episode (an automatic retry is not announced again).
    starts = {t.pk: t.episode()[-1].pk for t in late}
    keys = {t.pk: outbox.delayed_key(t.avatar_id, starts[t.pk]) for t in late}
    told = set(
        Notification.objects.filter(dedup_key__in=keys.values()).values_list("dedup_key", flat=True)
    )
    for training in late:
        if keys[training.pk] not in told:
            outbox.queue_delayed(training=training, episode_start_id=starts[training.pk])
