"""Applying what fal said: the one place that turns a ``FalOutcome`` into a transition.

The webhook, the periodic and staff checks, fal's record and adoption all end in
``apply``, so a rule about fal's answers changes here and nowhere else: which
transition, which owner message (``monitoring.owner_messages`` through
``transitions.finish_failed``), the result-URL rule, the stuck flag, the events and
the log lines. The rules are in docs/fal.md ("One outcome path").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from monitoring import failure_kinds, transitions
from monitoring.fal import payloads
from monitoring.fal.outcome import AnsweredBy, FalOutcome, Kind
from monitoring.fal.payloads import MediaUrl
from monitoring.models import EventSource, FalStatus, Training, TrainingOutcome
from monitoring.wording import Said, status_words
from notifications import outbox
from notifications.models import OwnerMessage

logger = logging.getLogger("monitoring")

UNSAFE_URL_ERROR_TYPE = "unsafe_result_url"
NO_LORA_ERROR_TYPE = "no_lora_in_result"
# The stuck reason of a result on a foreign host. Staff clear it, never a check (the
# time limits it would be judged by say nothing about the URL).
FOREIGN_HOST_REASON = "fal's result URL is outside FAL_MEDIA_ALLOWED_HOSTS: "


def flagged_for_result_url(training: Training) -> bool:
    return training.stuck_since is not None and training.stuck_reason.startswith(
        FOREIGN_HOST_REASON
    )


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did. ``look_next``: this answer could not decide, ask that source."""

    changed: bool
    summary: Said | str  # worded when shown (monitoring.wording)
    look_next: AnsweredBy | None = None


def apply(
    training: Training,
    outcome: FalOutcome,
    *,
    source: str,
    actor: Any = None,
    notify: bool = True,
    details: dict[str, Any] | None = None,
) -> Applied:
    """Finish (or flag, or defer) ``training`` from what fal said; idempotent."""
    details = {"answered_by": outcome.answered_by.value, **(details or {})}
    step = _Applying(training, outcome, source, actor, notify, details)
    if outcome.kind == Kind.FAILED:
        applied = step.failed()
    elif outcome.kind == Kind.SUCCEEDED:
        applied = step.succeeded()
    else:
        applied = step.without_lora()
    # After the transition, never before: a transition locks the avatar row and then
    # the training's, as the periodic check does; writing the training first would
    # take them in the other order and deadlock with a racing check.
    _keep_gateway_request_id(training, outcome.gateway_request_id)
    return applied


@dataclass(frozen=True)
class _Applying:
    training: Training
    outcome: FalOutcome
    source: str
    actor: Any
    notify: bool
    details: dict[str, Any]

    def failed(self) -> Applied:
        # Cancelled when a cancel was requested; otherwise the owner's message comes
        # from fal's machine-readable fields. fal's error body stays on the timeline.
        outcome = self.outcome
        details = self.details
        if isinstance(outcome.result, dict):
            details = {**outcome.result, **details}
        owner_message = ""
        active = self.training.finished_at is None  # a duplicate of a finished one: no retry
        if active and self._fals_own() and not transitions.cancel_was_requested(self.training):
            episode = self.training.episode()
            if len(episode) - 1 < settings.TRAINING_AUTO_RETRY_MAX:
                return self._retry(details)
            # Retries used up: fal never bills its own failures, unless one of these
            # attempts was stopped by our run deadline (GPU time may have been billed).
            billed = any(attempt.deadline_cancel_at for attempt in episode)
            owner_message = OwnerMessage.TECHNICAL if billed else OwnerMessage.FAL_FAILURE
        finished = transitions.finish_failed(
            self.training,
            error_message=outcome.message,
            error_type=outcome.error_type,
            http_status=outcome.http_status,
            detail_type_list=outcome.detail_types,
            details=details,
            result=outcome.result,
            source=self.source,
            actor=self.actor,
            notify=self.notify,
            owner_message=owner_message,
            fal_finished_at=outcome.finished_at,
        )
        if not finished.changed:
            return Applied(False, finished.detail)
        status, message = status_words(finished.status), outcome.message[:500]
        return Applied(
            True, Said("ended", status=status, error_type=outcome.error_type, message=message)
        )

    def _fals_own(self) -> bool:
        """fal's own failure, or the end of a run our deadline cancelled."""
        if self.training.deadline_cancel_at is not None:
            return True
        outcome = self.outcome
        return (
            failure_kinds.blame(
                error_type=outcome.error_type,
                detail_types=outcome.detail_types,
                http_status=outcome.http_status,
                start_deadline_sent=self.training.start_deadline_seconds is not None,
            )
            == failure_kinds.Blame.FAL
        )

    def _retry(self, details: dict[str, Any]) -> Applied:
        outcome = self.outcome
        error_type = outcome.error_type
        if self.training.deadline_cancel_at is not None:
            error_type = "run_deadline"
        retried = transitions.retry_attempt(
            self.training,
            error_type=error_type,
            error_message=outcome.message,
            details=details,
            source=self.source,
        )
        if not retried.changed:
            return Applied(False, retried.detail)
        assert retried.training is not None
        retry_id = retried.training.pk
        transaction.on_commit(
            lambda: _enqueue(f"the retry {retry_id}", "monitoring.tasks.send_attempt", retry_id)
        )
        _alert_if_many_retries()
        return Applied(True, Said("retried", code=error_type or "?"))

    def succeeded(self) -> Applied:
        """Both URLs judged by one rule (``payloads.check_media_url``) before "ready".

        An https URL outside FAL_MEDIA_ALLOWED_HOSTS flags the training for staff and
        tells the owner nothing; anything not https fails it, with a staff alert.
        """
        outcome, training = self.outcome, self.training
        unsafe = payloads.unsafe_result_url(outcome.lora_url, outcome.config_url)
        if unsafe is None:
            finished = transitions.complete(
                training,
                lora_url=outcome.lora_url,
                config_url=outcome.config_url,
                result=outcome.result,
                source=self.source,
                actor=self.actor,
                details=self.details,
                notify=self.notify,
                fal_finished_at=outcome.finished_at,
            )
            return Applied(
                finished.changed, Said("completed") if finished.changed else finished.detail
            )
        verdict, url = unsafe
        shown = url[:300]
        if verdict == MediaUrl.FOREIGN_HOST:
            reason = FOREIGN_HOST_REASON + shown
            flagged = transitions.flag_stuck(
                training, reason=reason, source=self.source, details=self.details
            )
            return Applied(flagged, Said("foreign_host", url=shown))
        finished = self._fail(
            f"fal's result URL is not https and was refused: {shown}",
            UNSAFE_URL_ERROR_TYPE,
            url=url[:2048],
        )
        if not finished.changed:
            return Applied(False, finished.detail)
        outbox.queue_unsafe_result_alert(
            training_id=training.pk,
            avatar_id=training.avatar_id,
            avatar_name=training.avatar.name,
            request_id=training.fal_request_id or "",
            url=url,
        )
        return Applied(True, Said("not_https", url=shown))

    def without_lora(self) -> Applied:
        """Finished without an error, and this answer has no LoRA file: look further.

        The webhook's payload may be missing or cut (fal could not serialise it): the
        queue is asked. The queue's result may lack it: fal's record is asked. Only the
        record decides: a payload without a LoRA fails the training; no payload at all
        (fal did not store it) flags it for staff, and the owner is told nothing.
        """
        answered_by = self.outcome.answered_by
        if answered_by == AnsweredBy.WEBHOOK:
            return _defer_to_queue_check(self.training)
        if answered_by == AnsweredBy.QUEUE:
            return Applied(False, Said("no_lora_ask_record"), AnsweredBy.RECORD)
        if not self.outcome.has_payload:
            return _result_unavailable(self.training, self.source)
        message = "fal's result has no LoRA file (diffusers_lora_file)"
        finished = self._fail(message, NO_LORA_ERROR_TYPE)
        return Applied(finished.changed, Said("no_lora"))

    def _fail(self, message: str, error_type: str, **details: Any) -> transitions.Outcome:
        return transitions.fail(
            self.training,
            error_message=message,
            error_type=error_type,
            details={**self.details, **details},
            result=self.outcome.result,
            fal_status=FalStatus.COMPLETED,
            fal_finished_at=self.outcome.finished_at,
            source=self.source,
            actor=self.actor,
            notify=self.notify,
        )


def _result_unavailable(training: Training, source: str) -> Applied:
    now = timezone.now()
    if training.result_unavailable_since is None:
        Training.objects.filter(pk=training.pk, finished_at__isnull=True).update(
            result_unavailable_since=now, fal_status=FalStatus.COMPLETED
        )
        training.result_unavailable_since = now
    flagged = transitions.restate_stuck(training, str, Said("result_unavailable"), source=source)
    return Applied(flagged, Said("result_unavailable"))


def _defer_to_queue_check(training: Training) -> Applied:
    """Leave the result to the worker, which fetches it from fal's queue (never in a request)."""
    moved = Training.objects.active().filter(pk=training.pk).update(next_check_at=timezone.now())
    if not moved:
        return Applied(False, Said("already_finished"))
    training_id = training.pk
    transaction.on_commit(
        lambda: _enqueue(
            f"a re-check of training {training_id}",
            "monitoring.tasks.recheck",
            [training_id],
            source=EventSource.WEBHOOK,
        )
    )
    return Applied(False, Said("from_queue"), AnsweredBy.QUEUE)


def _alert_if_many_retries() -> None:
    """Staff hear (once per episode, ``outbox.queue_retries_alert``) when more than
    AUTO_RETRY_ALERT_RATIO of the attempts that ended in the last hour, over 5, were
    retried: fal is having a bad day."""
    now = timezone.now()
    ended = Training.objects.filter(finished_at__gte=now - timedelta(hours=1))
    counts = ended.aggregate(
        ended=Count("pk"), retried=Count("pk", filter=Q(outcome=TrainingOutcome.RETRIED))
    )
    if (
        counts["ended"] > 5
        and counts["retried"] > settings.AUTO_RETRY_ALERT_RATIO * counts["ended"]
    ):
        outbox.queue_retries_alert(now=now, retried=counts["retried"], ended=counts["ended"])


def _enqueue(what: str, task: str, *args: Any, **kwargs: Any) -> None:
    # Runs after commit, so it must not raise: a lost hand-over only waits for the next
    # periodic check (the retry is due, and a deferred result's ``next_check_at`` is now).
    from django_q.tasks import async_task

    try:
        async_task(task, *args, **kwargs)
    except Exception:
        logger.exception("Could not queue %s; the next periodic check does it", what)


def _keep_gateway_request_id(training: Training, gateway_request_id: str) -> None:
    """fal's last runner attempt, for support (a query only when it changed)."""
    if not gateway_request_id or gateway_request_id == training.gateway_request_id:
        return
    Training.objects.filter(pk=training.pk).update(gateway_request_id=gateway_request_id)
    training.gateway_request_id = gateway_request_id
