"""Starting and cancelling trainings on fal: the service behind the admin, commands and tests.

Starting commits ``training``/SUBMITTING *before* anything is sent, so a second click
or a second process finds the avatar already training and never submits twice. The
submit is then sent exactly once; its outcome decides what happens next:

- fal answered with a request id: stored at once (``transitions.record_submitted``),
  the webhook and the periodic check can find the training from then on;
- fal refused it (401/403/422...) or it never left this machine: the avatar goes back
  to ``ready_for_training`` with the reason, nothing was billed;
- the answer was lost: the training stays SUBMITTING and is flagged stuck after
  STUCK_SUBMITTING_MINUTES for staff to decide. It is never re-sent automatically,
  because a second submit could start a second paid training.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from monitoring import transitions
from monitoring.fal import client as fal
from monitoring.fal import payloads
from monitoring.models import Avatar, Language, Owner, Training
from notifications import outbox

logger = logging.getLogger("monitoring")


def create_avatar_for_owner(
    *,
    owner_telegram_id: int,
    name: str,
    training_type: str,
    trigger_word: str,
    images_url: str,
    owner_username: str = "",
    owner_language: str | None = None,
    training_settings: dict[str, Any] | None = None,
    source: str,
    actor: Any = None,
) -> Avatar:
    """A new ``ready_for_training`` avatar, creating its owner (by Telegram id) if needed.

    An existing owner's language and username are updated when given, so the owner's
    next message follows what the bot last told us.
    """
    with transaction.atomic():
        owner, created = Owner.objects.get_or_create(
            telegram_id=owner_telegram_id,
            defaults={"language": owner_language or Language.RU, "username": owner_username},
        )
        changed = []
        if not created and owner_language and owner.language != owner_language:
            owner.language = owner_language
            changed.append("language")
        if not created and owner_username and owner.username != owner_username:
            owner.username = owner_username
            changed.append("username")
        if changed:
            owner.save(update_fields=changed)
        return transitions.create_avatar(
            owner=owner,
            name=name,
            training_type=training_type,
            trigger_word=trigger_word,
            images_url=images_url,
            training_settings=training_settings,
            source=source,
            actor=actor,
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
        # A job may exist on fal. Record what we know and let the stuck check raise it.
        Training.objects.filter(pk=training.pk).update(
            last_check_error=f"submit outcome unknown: {exc}"[:2000]
        )
        transitions.record_note(
            training,
            message=f"fal's answer to the submit was lost ({exc}); not resubmitted",
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
            _("fal's answer to the submit was lost (%s); staff must check fal before retrying")
            % exc,
            training,
        )

    transitions.record_submitted(
        training,
        request_id=answer.request_id,
        status_url=answer.status_url,
        response_url=answer.response_url,
        cancel_url=answer.cancel_url,
        queue_position=answer.queue_position,
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
