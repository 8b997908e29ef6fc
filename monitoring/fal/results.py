"""The one place that turns a ``FalOutcome`` into a transition, the owner's message, the
result-URL rule, the stuck flag, the events and the log lines (docs/fal.md, "One
outcome path")."""

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

# The stuck reason of a result on a foreign host: staff clear it, never a check.
FOREIGN_HOST_REASON = "fal's result URL is outside FAL_MEDIA_ALLOWED_HOSTS: "


def flagged_for_result_url(training: Training) -> bool:
    reason = training.stuck_reason
    return training.stuck_since is not None and reason.startswith(FOREIGN_HOST_REASON)


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
    kinds = {Kind.FAILED: step.failed, Kind.SUCCEEDED: step.succeeded}
    applied = kinds.get(outcome.kind, step.without_lora)()
    # fal's last runner attempt, for support. After the transition (avatar row, then the
    # training's, as the check locks them): the other order could deadlock.
    gateway_request_id = outcome.gateway_request_id
    if gateway_request_id and gateway_request_id != training.gateway_request_id:
        Training.objects.filter(pk=training.pk).update(gateway_request_id=gateway_request_id)
        training.gateway_request_id = gateway_request_id
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
        # fal's error body stays on the timeline.
        outcome = self.outcome
        result = outcome.result
        details = {**result, **self.details} if isinstance(result, dict) else self.details
        owner_message = ""
        active = self.training.finished_at is None  # a duplicate of a finished one: no retry
        # fal's own failure, or the end of a run our deadline cancelled.
        fals_own = self.training.deadline_cancel_at is not None or (
            failure_kinds.blame(
                error_type=outcome.error_type,
                detail_types=outcome.detail_types,
                http_status=outcome.http_status,
                start_deadline_sent=self.training.start_deadline_seconds is not None,
            )
            == failure_kinds.Blame.FAL
        )
        if active and fals_own and not transitions.cancel_was_requested(self.training):
            episode = self.training.episode()
            if len(episode) - 1 < settings.TRAINING_AUTO_RETRY_MAX:
                deadline = self.training.deadline_cancel_at is not None
                error_type = "run_deadline" if deadline else outcome.error_type
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
                    lambda: _enqueue(
                        f"the retry {retry_id}", "monitoring.tasks.send_attempt", retry_id
                    )
                )
                _alert_if_many_retries()
                return Applied(True, Said("retried", code=error_type or "?"))
            # Retries used up: fal bills none unless our run deadline stopped one.
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

    def succeeded(self) -> Applied:
        """Both URLs pass ``payloads.check_media_url`` before "ready"; a foreign https host
        flags the training (the owner hears nothing), anything not https fails it."""
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
            "unsafe_result_url",
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
        """No LoRA file in this answer: a webhook defers to the queue, the queue to fal's
        record; only the record decides (docs/fal.md, "One outcome path")."""
        answered_by, training = self.outcome.answered_by, self.training
        if answered_by == AnsweredBy.WEBHOOK:
            # The worker fetches the result from fal's queue (never in a request).
            moved = Training.objects.active().filter(pk=training.pk)
            if not moved.update(next_check_at=timezone.now()):
                return Applied(False, Said("already_finished"))
            transaction.on_commit(
                lambda: _enqueue(
                    f"a re-check of training {training.pk}",
                    "monitoring.tasks.recheck",
                    [training.pk],
                    source=EventSource.WEBHOOK,
                )
            )
            return Applied(False, Said("from_queue"), AnsweredBy.QUEUE)
        if answered_by == AnsweredBy.QUEUE:
            return Applied(False, Said("no_lora_ask_record"), AnsweredBy.RECORD)
        if not self.outcome.has_payload:
            now = timezone.now()
            if training.result_unavailable_since is None:
                Training.objects.filter(pk=training.pk, finished_at__isnull=True).update(
                    result_unavailable_since=now, fal_status=FalStatus.COMPLETED
                )
                training.result_unavailable_since = now
            said = Said("result_unavailable")
            flagged = transitions.restate_stuck(training, str, said, source=self.source)
            return Applied(flagged, said)
        message = "fal's result has no LoRA file (diffusers_lora_file)"
        finished = self._fail(message, "no_lora_in_result")
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


def _alert_if_many_retries() -> None:
    """Staff hear once per episode when fal is having a bad day (AUTO_RETRY_ALERT_RATIO)."""
    now = timezone.now()
    last_hour = Training.objects.filter(finished_at__gte=now - timedelta(hours=1))
    counts = last_hour.aggregate(
        ended=Count("pk"), retried=Count("pk", filter=Q(outcome=TrainingOutcome.RETRIED))
    )
    ended, retried = counts["ended"], counts["retried"]
    if ended > 5 and retried > settings.AUTO_RETRY_ALERT_RATIO * ended:
        outbox.queue_retries_alert(now=now, retried=retried, ended=ended)


def _enqueue(what: str, task: str, *args: Any, **kwargs: Any) -> None:
    # Runs after commit, so it must not raise: a lost hand-over waits for the next check.
    from django_q.tasks import async_task

    try:
        async_task(task, *args, **kwargs)
    except Exception:
        logger.exception("Could not queue %s; the next periodic check does it", what)
