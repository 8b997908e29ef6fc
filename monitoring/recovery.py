"""fal's own record, where the queue cannot tell (a 404, a lost submit); never submits.
See docs/architecture.md#fals-own-record-recovery-lost-submits-adoption.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from django.conf import settings
from django.utils import timezone

from monitoring import transitions, wording
from monitoring.fal import platform, results
from monitoring.fal.outcome import FalOutcome
from monitoring.models import EventSource, FalStatus, Training
from monitoring.wording import Said
from notifications import outbox

logger = logging.getLogger("monitoring")

RECORD = EventSource.FAL_RECORD
# fal's clock and ours may differ a little: the lost submit's window opens earlier.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass
class Recovery:
    """What a look at fal's record did. ``decided``: the training was finished or flagged."""

    decided: bool
    summary: Said | str  # worded when shown (monitoring.wording)
    changed: bool = False
    # True/False: the record knows the request or not; None: the record could not be read.
    in_record: bool | None = None


def apply_record_item(training: Training, item: platform.RecordItem, *, via: str) -> Recovery:
    """Finish ``training`` from fal's record of its request (or flag it for staff)."""
    applied = results.apply(
        training,
        FalOutcome.from_record(item),
        source=RECORD,
        details={"via": via, "status_code": item.status_code},
    )
    return Recovery(True, Said("record", words=applied.summary), applied.changed, True)


def recover_from_record(
    training: Training, *, via: str, client: platform.PlatformClient
) -> Recovery:
    """The queue cannot tell (a 404, a result without a LoRA): ask fal's record."""
    assert training.fal_request_id
    try:
        item = client.find_request(training.endpoint, training.fal_request_id)
    except platform.PlatformUnavailable as exc:
        return Recovery(False, Said("record_unreadable", error=exc))
    if item is None:
        return Recovery(False, Said("record_unknown"), in_record=False)
    logger.info(
        "fal's record answered for avatar %s (request_id=%s): HTTP %s, payload %s",
        training.avatar_id,
        training.fal_request_id,
        item.status_code,
        "kept" if item.has_output else "missing",
    )
    return apply_record_item(training, item, via=via)


def is_lost_submit(training: Training, now: datetime) -> bool:
    if training.finished_at is not None or training.fal_request_id:
        return False
    if training.fal_status in (FalStatus.NOT_SENT, FalStatus.HELD):
        return False  # a retry waiting for the worker, or a held start: nothing was sent
    if training.submit_unknown_since is not None:
        return True
    # No process answers a submit for this long (FAL_SUBMIT_TIMEOUT_SECONDS is far less).
    return now - training.sent_from >= timedelta(minutes=settings.STUCK_SUBMITTING_MINUTES)


def give_up_at(training: Training) -> datetime:
    return training.sent_from + timedelta(hours=settings.FAL_LOST_SUBMIT_GIVE_UP_HOURS)


def lookup_lost_submit(
    training: Training,
    *,
    via: str,
    now: datetime | None = None,
    client: platform.PlatformClient | None = None,
) -> Recovery:
    """Search fal's record for the job a lost submit may have created; adopt what matches."""
    now = now or timezone.now()
    if training.submit_unknown_since is None:
        # A process died mid-submit: from now on this is a lost submit like any other.
        Training.objects.filter(pk=training.pk, submit_unknown_since__isnull=True).update(
            submit_unknown_since=now
        )
        training.submit_unknown_since = now
    since = training.sent_from - CLOCK_SKEW
    find = platform.find_matching if client is None else client.find_matching
    try:
        matches, unverifiable = find(training.endpoint, training.arguments or {}, since=since)
    except platform.PlatformUnavailable as exc:
        return Recovery(False, Said("lost_unreadable", error=exc))
    known = Training.objects.filter(fal_request_id__in=[m.request_id for m in matches])
    taken = set(known.exclude(pk=training.pk).values_list("fal_request_id", flat=True))
    matches = [m for m in matches if m.request_id not in taken]
    if not matches:
        return _no_match(training, unverifiable, now)
    return _adopt_match(training, matches, via=via)


def _adopt_match(training: Training, matches: list[platform.RecordItem], *, via: str) -> Recovery:
    chosen, others = matches[0], matches[1:]
    adopted = transitions.record_submitted(
        training,
        request_id=chosen.request_id,
        source=RECORD,
        message="the lost submit reached fal: its request was found in fal's record",
        details={"via": via, "matches": len(matches)},
    )
    if not adopted:
        training.refresh_from_db()
        return Recovery(False, Said("lost_has_id"))
    if others:
        ids = ", ".join(m.request_id for m in others)
        details = {"adopted": chosen.request_id, "others": [m.request_id for m in others]}
        transitions.record_note(
            training,
            message=(
                f"fal billed {len(matches)} jobs for this submit; adopted the earliest "
                f"({chosen.request_id}), not followed: {ids}"
            ),
            source=RECORD,
            details=details,
        )
        text = (
            f"💸 Двойной сабмит на fal: аватар #{training.avatar_id}, "
            f"{len(matches)} задачи с одним входом.\nВзята самая ранняя: "
            f"<code>{escape(chosen.request_id)}</code>\nНе отслеживаются: "
            + ", ".join(f"<code>{escape(m.request_id)}</code>" for m in others)
        )
        outbox.queue_fal_record_alert(
            dedup_key=f"double_submit:{training.pk}", text=text, training=training, context=details
        )
        logger.warning(
            "Double submit for avatar %s: adopted %s, %s more billed on fal",
            training.avatar_id,
            chosen.request_id,
            len(others),
        )
    finished = apply_record_item(training, chosen, via=via)
    return Recovery(True, Said("lost_found", words=finished.summary), True, in_record=True)


def _no_match(training: Training, unverifiable: int, now: datetime) -> Recovery:
    summary = Said("lost_no_match_unlisted" if unverifiable else "lost_no_match", n=unverifiable)
    if training.lost_submit_given_up_at is None and now >= give_up_at(training):
        won = (
            Training.objects.active()
            .filter(pk=training.pk, lost_submit_given_up_at__isnull=True)
            .update(lost_submit_given_up_at=now)
        )
        if won:
            training.lost_submit_given_up_at = now
            text = (
                f"🔎 Сабмит аватара #{training.avatar_id} потерян: за "
                f"{settings.FAL_LOST_SUBMIT_GIVE_UP_HOURS:g} ч в записях fal нет задачи с "
                "этим входом. Повторно не отправляется; оператор может отметить "
                "«на fal такой задачи нет»."
            )
            if unverifiable:
                text += (
                    f"\n⚠️ {unverifiable} задач в записях fal без входных данных: "
                    "сравнить не удалось, проверьте их на fal."
                )
            outbox.queue_fal_record_alert(
                dedup_key=f"lost_submit_given_up:{training.pk}", text=text, training=training
            )
            transitions.restate_stuck(
                training, wording.lost_submit_words, give_up_at(training), True, source=RECORD
            )
            summary = summary.then(Said("lost_given_up"))
    return Recovery(False, summary, in_record=False)
