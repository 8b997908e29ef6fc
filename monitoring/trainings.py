"""Starting and cancelling trainings on fal: the service behind the admin, commands and tests.

Starting commits ``training``/SUBMITTING *before* anything is sent, so a second click
or a second process finds the avatar already training and never submits twice. The
submit is then sent exactly once; its outcome decides what happens next:

- fal answered with a request id: stored at once (``transitions.record_submitted``),
  the webhook and the periodic check can find the training from then on;
- fal refused it (401/403/422...) or it never left this machine: the avatar goes back
  to ``ready_for_training`` with the reason, nothing was billed;
- the answer was lost: the training stays SUBMITTING, "submit outcome unknown, being
  looked up": every check searches fal's record for the job it may have created
  (``monitoring.recovery``) and adopts it when found. It is never re-sent
  automatically, because a second submit could start a second paid training; only an
  Operator's "fal has no such job" (``record_no_fal_job``) makes it startable again.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from monitoring import transitions
from monitoring.fal import client as fal
from monitoring.fal import payloads
from monitoring.models import Avatar, Training, TrainingOutcome
from notifications import outbox

logger = logging.getLogger("monitoring")

# What start_training (the command, the admin, the API) says of a lost submit: the
# avatar is training, its job is being looked for; starting it again is not the answer.
SUBMIT_UNKNOWN_STATE = "submit_outcome_unknown"
SUBMIT_UNKNOWN_DETAIL = gettext_lazy(
    "submit outcome unknown, being looked up in fal's record (do not start it again)"
)


def start_training(avatar: Avatar, *, source: str, actor: Any = None) -> transitions.Outcome:
    """Submit ``avatar`` to fal once. ``Outcome.changed`` is False when nothing was sent."""
    endpoint, arguments = payloads.training_input(
        avatar.training_type,
        images_url=avatar.images_url,
        trigger_word=avatar.trigger_word,
        extra=avatar.training_settings,
    )
    begun = transitions.begin_training(
        avatar,
        endpoint=endpoint,
        arguments=arguments,
        webhook_url=fal.webhook_url(),
        source=source,
        actor=actor,
    )
    if not begun.changed:
        return begun
    training = begun.training
    assert training is not None

    try:
        answer = fal.submit(training)
    except (fal.FalRefused, fal.FalAuthError) as exc:
        if exc.status_code in (401, 403):
            outbox.queue_fal_account_alert(status_code=exc.status_code, detail=exc.detail)
        code = f"http_{exc.status_code}" if exc.status_code else "not_sent"
        refused = transitions.refuse_submit(
            training, error_type=code, error_message=exc.detail, source=source, actor=actor
        )
        logger.warning(
            "fal refused the training of avatar %s (%s): %s", avatar.pk, code, exc.detail
        )
        return transitions.Outcome(
            refused.changed,
            refused.status,
            _("fal refused the training: %s") % exc.detail,
            training,
        )
    except fal.FalSubmitUnknown as exc:
        # A job may exist on fal: every check looks for it in fal's record from now on.
        now = timezone.now()
        Training.objects.filter(pk=training.pk).update(
            last_check_error=f"submit outcome unknown: {exc}"[:2000],
            submit_unknown_since=now,
            next_check_at=now,
        )
        training.submit_unknown_since = now
        transitions.record_note(
            training,
            message=(
                f"fal's answer to the submit was lost ({exc}); not resubmitted, looking it up "
                "in fal's record"
            ),
            source=source,
        )
        logger.error(
            "Submit outcome unknown for avatar %s (training %s): %s; not resubmitted",
            avatar.pk,
            training.pk,
            exc,
        )
        return transitions.Outcome(
            True,
            avatar.status,
            SUBMIT_UNKNOWN_DETAIL,
            training,
        )

    transitions.record_submitted(
        training,
        request_id=answer.request_id,
        status_url=answer.status_url,
        response_url=answer.response_url,
        cancel_url=answer.cancel_url,
        queue_position=answer.queue_position,
        gateway_request_id=answer.gateway_request_id,
        next_check_at=timezone.now() + timedelta(seconds=settings.CHECK_INTERVAL_SECONDS),
        source=source,
        actor=actor,
    )
    training.refresh_from_db()
    return transitions.Outcome(True, avatar.status, "", training)


def cancel_training(training: Training, *, source: str, actor: Any = None) -> str:
    """Ask fal to stop ``training``; returns what happened, for staff."""
    training.refresh_from_db()
    if not training.is_active:
        return _("Nothing to cancel: the training already ended (%s).") % (training.outcome or "-")
    if not training.fal_request_id:
        # Never reached fal, or its answer was lost. Nothing on fal to stop that we know of.
        outcome = transitions.cancel(
            training,
            source=source,
            actor=actor,
            reason="cancelled before fal returned a request id",
        )
        if outcome.changed:
            return _("Cancelled (fal never returned a request id for it).")
        return _("Not cancelled: %s.") % outcome.detail

    try:
        answer = fal.cancel(training.endpoint, training.fal_request_id)
    except fal.FalAuthError as exc:
        outbox.queue_fal_account_alert(status_code=exc.status_code or 401, detail=exc.detail)
        return _("fal rejected the cancel (%(code)s): %(detail)s") % {
            "code": exc.status_code,
            "detail": exc.detail,
        }
    except fal.FalError as exc:
        return _("fal did not answer the cancel (%s); try again.") % exc

    if answer == "CANCELLATION_REQUESTED":
        transitions.request_cancel(training, source=source, actor=actor)
        return _(
            "Cancellation requested. The avatar becomes cancelled once a check confirms fal "
            "stopped the job (a job that completes anyway keeps its result)."
        )
    if answer == "ALREADY_COMPLETED":
        # The next check records the real outcome (completed or failed) as usual.
        Training.objects.filter(pk=training.pk, finished_at__isnull=True).update(
            next_check_at=timezone.now()
        )
        return _("fal had already finished this job; the next check records its outcome.")
    outcome = transitions.cancel(
        training,
        source=source,
        actor=actor,
        reason="fal does not know this request (cancel: NOT_FOUND)",
    )
    if outcome.changed:
        return _("Cancelled: fal does not know this request any more.")
    return _("Not cancelled: %s.") % outcome.detail


def record_no_fal_job(training: Training, *, actor: Any, source: str) -> str:
    """An Operator's "fal has no such job" for a lost submit: the avatar is startable again.

    Needs ``monitoring.start_training`` (it makes a new paid start possible), and only
    after FAL_LOST_SUBMIT_GIVE_UP_HOURS of lookups: before then the job may still be
    running on fal, where its record does not list it yet. fal's record is asked once
    more first; a match found now is adopted instead.
    """
    from monitoring import recovery

    if actor is not None and not actor.has_perm("monitoring.start_training"):
        raise PermissionDenied(_("You may not make a lost submit startable again."))
    training.refresh_from_db()
    if training.finished_at is not None or training.fal_request_id:
        return _("Nothing to do: the training has a fal request or has ended.")
    if training.lost_submit_given_up_at is None:
        return _(
            "Not yet: fal's record is searched for this submit until %(until)s UTC; a job "
            "still running on fal is not listed there before it ends."
        ) % {"until": f"{recovery.give_up_at(training):%Y-%m-%d %H:%M}"}
    found = recovery.lookup_lost_submit(training, via=source)
    if training.fal_request_id:
        return _("fal's record has it after all: adopted (%s).") % found.summary
    if found.in_record is not False:
        return _("fal's record could not be read (%s); nothing changed, try again.") % (
            found.summary
        )
    outcome = transitions.refuse_submit(
        training,
        error_type="no_fal_job",
        error_message="An Operator recorded that fal has no job for this lost submit",
        outcome=TrainingOutcome.NO_FAL_JOB,
        source=source,
        actor=actor,
    )
    if outcome.changed:
        return _("Recorded: fal has no such job. The avatar can be started again.")
    return _("Not changed: %s.") % outcome.detail
