"""Finishing a training with the LoRA fal produced: the one rule for every completing path.

The webhook, the periodic check and fal's record lookups all end here, so a URL fal
hands us is judged once (``payloads.check_media_url``) before any owner hears
"ready":

- both URLs allowed: the training completes;
- a URL that is not https (``javascript:``, ``data:``, ``http:``): the training fails
  with a clear error and staff get an alert with the URL; nothing is shown as ready;
- an https URL outside ``FAL_MEDIA_ALLOWED_HOSTS``: the training is flagged stuck for
  staff with the URL in the reason, and the owner is told nothing until staff decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitoring import transitions
from monitoring.fal import payloads
from monitoring.fal.payloads import MediaUrl
from monitoring.models import Training
from notifications import outbox

UNSAFE_URL_ERROR_TYPE = "unsafe_result_url"
# The stuck reason of a result on a foreign host. Staff clear it, never a check (the
# time limits it would be judged by say nothing about the URL).
FOREIGN_HOST_REASON = "fal's result URL is outside FAL_MEDIA_ALLOWED_HOSTS: "


def flagged_for_result_url(training: Training) -> bool:
    return training.stuck_since is not None and training.stuck_reason.startswith(
        FOREIGN_HOST_REASON
    )


@dataclass(frozen=True)
class Finished:
    """What ``complete_with_urls`` did: ``changed`` when this call moved the training."""

    changed: bool
    verdict: MediaUrl
    summary: str
    outcome: transitions.Outcome | None = None


def complete_with_urls(
    training: Training,
    *,
    lora_url: str,
    config_url: str = "",
    result: Any = None,
    source: str,
    actor: Any = None,
    details: dict[str, Any] | None = None,
    notify: bool = True,
) -> Finished:
    unsafe = payloads.unsafe_result_url(lora_url, config_url)
    if unsafe is None:
        outcome = transitions.complete(
            training,
            lora_url=lora_url,
            config_url=config_url,
            result=result,
            source=source,
            actor=actor,
            details=details,
            notify=notify,
        )
        return Finished(outcome.changed, MediaUrl.ALLOWED, "completed", outcome)
    verdict, url = unsafe
    shown = url[:300]
    if verdict == MediaUrl.FOREIGN_HOST:
        flagged = transitions.flag_stuck(
            training,
            reason=FOREIGN_HOST_REASON + shown,
            source=source,
        )
        return Finished(flagged, verdict, f"result URL on a foreign host, flagged stuck: {shown}")
    outcome = transitions.fail(
        training,
        error_message=f"fal's result URL is not https and was refused: {shown}",
        error_type=UNSAFE_URL_ERROR_TYPE,
        details={**(details or {}), "url": url[:2048]},
        result=result,
        source=source,
        actor=actor,
        notify=notify,
    )
    if outcome.changed:
        avatar = training.avatar
        outbox.queue_unsafe_result_alert(
            training_id=training.pk,
            avatar_id=avatar.pk,
            avatar_name=avatar.name,
            request_id=training.fal_request_id or "",
            url=url,
        )
    return Finished(
        outcome.changed, verdict, f"result URL is not https, training failed: {shown}", outcome
    )
