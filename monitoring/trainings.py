"""Starting and cancelling trainings on fal: the service behind the admin, commands and API.

A start is committed before anything is sent and the submit is sent exactly once; a
lost answer is looked up, never re-sent. See docs/architecture.md#starting-a-training.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from monitoring import billing, recovery, roles, status_checks, stuck, transitions, wording
from monitoring.fal import client as fal
from monitoring.fal import payloads, platform, results
from monitoring.fal.outcome import FalOutcome
from monitoring.models import (
    Avatar,
    AvatarStatus,
    EventSource,
    FalStatus,
    HoldReason,
    Language,
    Owner,
    Training,
    TrainingOutcome,
    UnknownFalRequest,
)
from notifications import outbox, reachability
from notifications.models import OwnerMessage

logger = logging.getLogger("monitoring")

# What start_training says of a lost submit: its job is being looked for, do not restart.
SUBMIT_UNKNOWN_STATE = "submit_outcome_unknown"
SUBMIT_UNKNOWN_DETAIL = gettext_lazy(
    "submit outcome unknown, being looked up in fal's record (do not start it again)"
)


def create_avatar_for_owner(
    *,
    owner_telegram_id: int,
    owner_username: str = "",
    owner_language: str | None = None,
    source: str,
    actor: Any = None,
    **fields: Any,
) -> Avatar:
    """``fields``: the new avatar's (name, training_type, trigger_word, images_url...). An
    existing owner's language and username are updated when given, so the owner's next
    message follows what the bot last told us."""
    given = {"language": owner_language, "username": owner_username}
    given = {key: value for key, value in given.items() if value}
    with transaction.atomic():
        owner = Owner.objects.get_or_create(telegram_id=owner_telegram_id, defaults=given)[0]
        changed = [key for key, value in given.items() if getattr(owner, key) != value]
        for key in changed:
            setattr(owner, key, given[key])
        owner.save(update_fields=changed)  # nothing when nothing changed
        return transitions.create_avatar(Avatar(owner=owner, **fields), source=source, actor=actor)


def _owner_came_back(avatar: Avatar, source: str) -> None:
    """The bot (the API) talks to this owner: they can be messaged again."""
    if source == EventSource.API:
        reachability.reachable_again(avatar.owner.telegram_id, why="the bot started a training")


def _require(actor: Any, permission: str, refusal: str) -> None:
    """Staff users need ``permission``; other callers (the API) check their own."""
    if callable(getattr(actor, "has_perm", None)) and not actor.has_perm(permission):
        raise PermissionDenied(refusal)


def _note(training: Training, details: dict[str, Any], source: str, actor: Any = None) -> None:
    message = wording.english(wording.note_words, details)
    transitions.record_note(training, message=message, source=source, actor=actor, details=details)


def start_training(avatar: Avatar, *, source: str, actor: Any = None) -> transitions.Outcome:
    """Submit ``avatar`` to fal once. ``Outcome.changed`` is False when nothing was sent."""
    _owner_came_back(avatar, source)
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
    if not begun.changed or begun.training is None:
        return begun
    return send(begun.training, source=source, actor=actor)


def send(
    training: Training, *, source: str, actor: Any = None, release: bool = False
) -> transitions.Outcome:
    """Send one attempt to fal (SUBMITTING, NOT_SENT, or HELD with ``release``) exactly
    once, claimed here so that two workers never both send it; held instead while
    ``billing.hold_reason`` says so, or when fal refuses it with 403 (a locked account)."""
    avatar = training.avatar
    retry = training.fal_status == FalStatus.NOT_SENT or (
        training.fal_status == FalStatus.HELD and len(training.episode()) > 1
    )
    reason = None if release else billing.hold_reason()
    if reason:
        return transitions.hold(training, reason=reason, source=source, actor=actor)
    fields: dict[str, Any] = {"fal_status": FalStatus.SUBMITTING}
    if training.fal_status == FalStatus.HELD:
        fields["released_at"] = fields["next_check_at"] = timezone.now()
    if settings.TRAINING_START_TIMEOUT_SECONDS:
        fields["start_deadline_seconds"] = settings.TRAINING_START_TIMEOUT_SECONDS
    claimed = (
        Training.objects.active()
        .filter(pk=training.pk, fal_status=training.fal_status, fal_request_id__isnull=True)
        .update(**fields)
    )
    if not claimed:
        return transitions.Outcome(False, avatar.status, "already sent", training)
    for name, value in fields.items():
        setattr(training, name, value)
    try:
        answer = fal.submit(training)
    except (fal.FalRefused, fal.FalAuthError) as exc:
        if exc.status_code == 403:
            # A locked account (the status, not the words): no job, not the owner's failure.
            billing.account_locked(exc.detail)
            return transitions.hold(
                training,
                reason=HoldReason.ACCOUNT_LOCKED,
                source=source,
                actor=actor,
                detail=exc.detail,
            )
        if exc.status_code == 401:
            outbox.queue_fal_account_alert(status_code=exc.status_code, detail=exc.detail)
        code = f"http_{exc.status_code}" if exc.status_code else "not_sent"
        logger.warning(
            "fal refused the training of avatar %s (%s): %s", avatar.pk, code, exc.detail
        )
        if retry:
            # fal failed the attempt before and refuses the retry: that failure stands.
            refused = transitions.fail(
                training,
                error_message=f"the automatic retry was refused by fal: {exc.detail}",
                error_type=code,
                owner_message=OwnerMessage.TECHNICAL,
                source=source,
                actor=actor,
            )
        else:
            refused = transitions.refuse_submit(
                training, error_type=code, error_message=exc.detail, source=source, actor=actor
            )
        detail = _("fal refused the training: %s") % exc.detail
        return transitions.Outcome(refused.changed, refused.status, detail, training)
    except fal.FalSubmitUnknown as exc:
        # A job may exist on fal: every check looks for it in fal's record from now on.
        now = timezone.now()
        Training.objects.filter(pk=training.pk).update(
            last_check_error=f"submit outcome unknown: {exc}"[:2000],
            submit_unknown_since=now,
            next_check_at=now,
        )
        training.submit_unknown_since = now
        _note(training, {"code": "submit_lost", "error": str(exc)[:1000]}, source)
        logger.error(
            "Submit outcome unknown for avatar %s (training %s): %s; not resubmitted",
            avatar.pk,
            training.pk,
            exc,
        )
        return transitions.Outcome(True, avatar.status, str(SUBMIT_UNKNOWN_DETAIL), training)

    transitions.record_submitted(
        training,
        **asdict(answer),
        next_check_at=timezone.now() + timedelta(seconds=settings.CHECK_INTERVAL_SECONDS),
        source=source,
        actor=actor,
    )
    training.refresh_from_db()
    return transitions.Outcome(True, avatar.status, "", training)


def release_held(*, budget: float = 30.0) -> int:
    """Send held starts, oldest first, for ``budget`` seconds at most (a task queues the
    rest); returns how many were sent."""
    deadline = time.monotonic() + budget
    sent = 0
    while time.monotonic() < deadline:
        if billing.hold_reason():
            return sent
        training = Training.objects.held().select_related("avatar").first()
        if training is None:
            return sent
        outcome = send(training, source=EventSource.SYSTEM, release=True)
        if outcome.detail == transitions.HELD:
            return sent  # held again: fal still refuses
        sent += outcome.changed
    if Training.objects.held().exists():
        from django_q.tasks import async_task

        async_task("monitoring.tasks.release_held", task_name="send held starts")
    return sent


def release(training: Training, *, actor: Any, source: str = EventSource.STAFF) -> str:
    """An Operator's release of one held start, whatever the balance says (without an
    admin key, the only release)."""
    _require(actor, roles.START_TRAINING, _("You may not release a held start."))
    training.refresh_from_db()
    if not training.is_held:
        return _("Not held: nothing to release.")
    outcome = send(training, source=source, actor=actor, release=True)
    if outcome.detail == transitions.HELD:
        return _("fal refused it again (account locked): held again.")
    if training.fal_request_id:
        billing.account_unlocked()
        return _("Released: sent to fal (request %s).") % training.fal_request_id
    return _("Released: %s") % (outcome.detail or outcome.status)


def cancel_training(training: Training, *, source: str, actor: Any = None) -> str:
    """Ask fal to stop ``training``; returns what happened, for staff."""
    training.refresh_from_db()
    if not training.is_active:
        return _("Nothing to cancel: the training already ended (%s).") % (training.outcome or "-")
    if not training.fal_request_id:
        # Nothing on fal to stop that we know of; a held start never began for its owner.
        held = training.is_held
        reason = "cancelled before fal returned a request id"
        if held:
            reason = "held start cancelled (never sent to fal)"
        outcome = transitions.cancel(
            training, source=source, actor=actor, reason=reason, notify=not held
        )
        if outcome.changed:
            return _("Cancelled (fal never returned a request id for it).")
        return _("Not cancelled: %s.") % outcome.detail

    # Recorded before fal is asked: fal's failure that the cancel causes can arrive (by
    # webhook or check) before fal has even answered us, and must read as the cancel.
    transitions.request_cancel(training, source=source, actor=actor)
    try:
        answer = fal.cancel(training.endpoint, training.fal_request_id)
    except fal.FalAuthError as exc:
        transitions.withdraw_cancel(training, source=source, actor=actor, reason=str(exc))
        outbox.queue_fal_account_alert(status_code=exc.status_code or 401, detail=exc.detail)
        return _("fal rejected the cancel (%(code)s): %(detail)s") % {
            "code": exc.status_code,
            "detail": exc.detail,
        }
    except fal.FalError as exc:
        # It may have reached fal: the request stands, a failure now is the cancel.
        return _("fal did not answer the cancel (%s); try again.") % exc

    if answer == "CANCELLATION_REQUESTED":
        return _(
            "Cancellation requested. The avatar becomes cancelled once a check confirms fal "
            "stopped the job (a job that completes anyway keeps its result)."
        )
    if answer == "ALREADY_COMPLETED":
        # It ended before our cancel reached fal: the next check records its real outcome.
        transitions.withdraw_cancel(
            training, source=source, actor=actor, reason="fal had already finished the job"
        )
        Training.objects.active().filter(pk=training.pk).update(next_check_at=timezone.now())
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


def cancel_for_deadline(training: Training) -> str:
    """Cancel on fal a run past its limit (``stuck.run_limit``): not staff's, so fal's failure
    that it causes is retried like fal's own (``results``); one fal does not confirm leaves
    the training flagged for staff, never retried."""
    now = timezone.now()
    won = (
        Training.objects.active()
        .filter(pk=training.pk, deadline_cancel_at__isnull=True, cancel_requested_at__isnull=True)
        .update(deadline_cancel_at=now, next_check_at=now)
    )
    if not won:
        return "already being cancelled"
    training.deadline_cancel_at = now
    minutes = int(stuck.run_limit(training).total_seconds() // 60)
    _note(training, {"code": "run_deadline", "minutes": minutes}, EventSource.SYSTEM)
    try:
        answer = fal.cancel(training.endpoint, training.fal_request_id or "")
    except fal.FalError as exc:
        answer = f"no answer ({exc})"
    if answer == "CANCELLATION_REQUESTED":
        return answer
    # Not confirmed: the deadline's cancel is withdrawn, so nothing retries it.
    Training.objects.filter(pk=training.pk).update(deadline_cancel_at=None)
    training.deadline_cancel_at = None
    if answer != "ALREADY_COMPLETED":  # then its real outcome stands, seen by the next check
        said = wording.Said("deadline_unconfirmed", minutes=minutes, answer=answer)
        transitions.restate_stuck(training, str, said, source=EventSource.SYSTEM)
    return answer


def record_no_fal_job(training: Training, *, actor: Any, source: str) -> str:
    """An Operator's "fal has no such job" for a lost submit: the avatar is startable again.
    Only after FAL_LOST_SUBMIT_GIVE_UP_HOURS: until then the job may run on fal unlisted."""
    _require(actor, roles.START_TRAINING, _("You may not make a lost submit startable again."))
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


@dataclass
class AdoptResult:
    avatar: Avatar
    training: Training
    adopted: bool  # False: the request id was already followed, nothing changed


class AdoptRefused(ValueError):
    """Neither fal's queue nor its record knows the request, or the input is bad."""


@dataclass
class _FalSays:
    """What fal's queue and record said about a request, gathered before any write."""

    report: fal.FalStatusReport | None = None
    result: dict | None = None
    item: platform.RecordItem | None = None
    refused: fal.FalJobFailed | None = None  # the result fetch's 4xx: the job failed
    doubts: list[str] = field(default_factory=list)  # answers we could not get

    @property
    def inputs(self) -> dict:
        return self.item.json_input or {} if self.item is not None else {}


def endpoint_of(request_id: str) -> str | None:
    """The one trainer endpoint whose queue or record knows ``request_id`` (None: none, or
    fal could not be asked): the adopt page pre-selects it."""
    known = []
    for endpoint in payloads.ENDPOINTS.values():
        try:
            try:
                fal.status(endpoint, request_id)
            except fal.FalNotFound:
                if platform.find_request(endpoint, request_id) is None:
                    continue
        except (fal.FalError, platform.PlatformUnavailable):
            return None
        known.append(endpoint)
    return known[0] if len(known) == 1 else None


def _ask_fal(endpoint: str, request_id: str) -> _FalSays:
    says = _FalSays()
    try:
        says.report = fal.status(endpoint, request_id)
    except fal.FalNotFound:
        pass
    except fal.FalError as exc:
        says.doubts.append(f"queue: {exc}")
    if says.report is not None and says.report.status != "COMPLETED":
        return says  # still running: fal's record lists finished requests only
    try:
        says.item = platform.find_request(endpoint, request_id)
    except platform.PlatformUnavailable as exc:
        says.doubts.append(str(exc))
    if says.report and not says.report.error and not (says.item and says.item.has_output):
        try:
            says.result = fal.result(endpoint, request_id)
        except fal.FalJobFailed as exc:
            says.refused = exc
        except fal.FalError as exc:
            says.doubts.append(f"result: {exc}")  # the periodic check fetches it later
    return says


def _finish_adopted(training: Training, says: _FalSays, *, notify: bool, source: str) -> None:
    """A request that had already ended when adopted ends here too, from what fal said."""
    report = says.report
    if report is not None and report.status != "COMPLETED":
        transitions.record_fal_status(
            training, fal_status=report.status, queue_position=report.queue_position, source=source
        )
        return
    outcome = FalOutcome.from_queue(report, says.result, says.refused) if report else None
    if outcome is not None:
        if results.apply(training, outcome, source=source, notify=notify).look_next is None:
            return
    if says.item is not None:
        results.apply(training, FalOutcome.from_record(says.item), source=source, notify=notify)


def adopt_training(
    *,
    request_id: str,
    endpoint: str,
    avatar: Avatar | None = None,
    owner_telegram_id: int | None = None,
    name: str = "",
    training_type: str | None = None,
    owner_language: str | None = None,
    notify: bool = False,
    created_at: datetime | None = None,
    source: str,
    actor: Any = None,
) -> AdoptResult:
    """Follow fal request ``request_id`` of ``endpoint``, started by another system;
    idempotent on the request id. One that had ended tells its owner only with ``notify``
    (the old system may have told them)."""
    _require(actor, roles.ADOPT_TRAINING, _("You may not adopt fal requests."))
    request_id = (request_id or "").strip() if isinstance(request_id, str) else ""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", request_id):
        raise AdoptRefused(_("request_id must be fal's request id (letters, digits, . _ : -)"))
    if endpoint not in payloads.ENDPOINTS.values():
        raise AdoptRefused(
            _("endpoint must be one of our trainers: %s") % ", ".join(payloads.ENDPOINTS.values())
        )
    if training_type is None:
        training_type = payloads.training_type_of(endpoint)
    elif payloads.ENDPOINTS.get(training_type) != endpoint:
        raise AdoptRefused(
            _("training type %(type)r does not train on %(endpoint)s")
            % {"type": training_type, "endpoint": endpoint}
        )
    if avatar is not None:
        if owner_telegram_id is not None or name:
            raise AdoptRefused(_("give either an avatar, or an owner's Telegram id and a name"))
    elif owner_telegram_id is None:
        raise AdoptRefused(_("give an avatar, or an owner's Telegram id and a name"))
    elif not isinstance(owner_telegram_id, int) or isinstance(owner_telegram_id, bool):
        raise AdoptRefused(_("owner_telegram_id must be a Telegram user id (a number)"))
    elif owner_telegram_id <= 0:
        raise AdoptRefused(_("owner_telegram_id must be a positive Telegram user id"))
    elif not isinstance(name, str) or not name.strip() or len(name) > 128:
        raise AdoptRefused(_("name must be 1 to 128 characters"))
    if owner_language is not None and owner_language not in Language.values:
        raise AdoptRefused(_("owner_language must be one of %s") % ", ".join(Language.values))
    if created_at is not None and (
        not isinstance(created_at, datetime) or timezone.is_naive(created_at)
    ):
        raise AdoptRefused(_("created_at must be a date and time with its time zone"))
    if (existing := _already_followed(request_id)) is not None:
        return existing
    says = _ask_fal(endpoint, request_id)
    if says.report is None and says.item is None:
        if says.doubts:
            raise AdoptRefused(
                _("fal could not be asked about %(id)s now (%(why)s); try again later")
                % {"id": request_id, "why": "; ".join(says.doubts)}
            )
        raise AdoptRefused(
            _("neither fal's queue nor its record knows request %(id)s of %(endpoint)s")
            % {"id": request_id, "endpoint": endpoint}
        )
    try:
        with transaction.atomic():
            if avatar is None:
                assert owner_telegram_id is not None  # the input check above requires one
                images_url = payloads.images_url_of(says.inputs)
                avatar = create_avatar_for_owner(
                    owner_telegram_id=owner_telegram_id,
                    owner_language=owner_language,
                    name=name.strip(),
                    training_type=training_type,
                    trigger_word=payloads.trigger_of(says.inputs)[:128],
                    images_url="" if len(images_url) > payloads.MAX_URL_LENGTH else images_url,
                    source=source,
                    actor=actor,
                )
            else:
                avatar.refresh_from_db()
                if avatar.status == AvatarStatus.DRAFT:
                    transitions.mark_ready(avatar, source=source, actor=actor)
                elif avatar.status == AvatarStatus.ERROR:
                    transitions.retrain(avatar, source=source, actor=actor)
                if avatar.status != AvatarStatus.READY_FOR_TRAINING:
                    raise AdoptRefused(
                        _("avatar %(id)s is %(status)s: adopt the request into a new avatar")
                        % {"id": avatar.pk, "status": avatar.status}
                    )
            begun = transitions.begin_training(
                avatar,
                endpoint=endpoint,
                arguments=says.inputs,
                webhook_url="",  # fal sends the webhook to whoever submitted it
                source=source,
                actor=actor,
            )
            if (training := begun.training) is None:
                raise AdoptRefused(
                    _("avatar %(id)s could not start: %(why)s")
                    % {"id": avatar.pk, "why": begun.detail}
                )
            transitions.record_submitted(
                training,
                request_id=request_id,
                queue_position=says.report.queue_position if says.report else None,
                source=source,
                actor=actor,
                message="adopted: a fal request started outside the monitor",
                details={"adopted": True, "in_fal_record": says.item is not None},
            )
            if created_at is not None:
                Avatar.objects.filter(pk=avatar.pk).update(created_at=created_at)
                Training.objects.filter(pk=training.pk).update(created_at=created_at)
                training.created_at = created_at
            _finish_adopted(training, says, notify=notify, source=source)
            # reconcile_fal's list of requests nobody followed: this one is followed now.
            UnknownFalRequest.objects.filter(request_id=request_id).update(
                adopted_training=training
            )
    except IntegrityError:
        # Adopted by someone else at the same moment: theirs stands.
        if (existing := _already_followed(request_id)) is None:
            raise
        return existing
    avatar.refresh_from_db()
    training.refresh_from_db()
    _owner_came_back(avatar, source)
    return AdoptResult(avatar=avatar, training=training, adopted=True)


def _already_followed(request_id: str) -> AdoptResult | None:
    training = Training.objects.select_related("avatar").filter(fal_request_id=request_id).first()
    return AdoptResult(training.avatar, training, adopted=False) if training else None


def recheck(
    trainings: list[Training], *, source: str, actor: Any = None
) -> list[status_checks.CheckReport]:
    """Check ``trainings`` on fal now and put fal's answer on each timeline, even when
    nothing changed (staff asked; routine checks record changes only)."""
    reports = status_checks.check_trainings(trainings, source=source)
    by_id = {training.pk: training for training in trainings}
    for report in reports:
        training = by_id[report.training_id]
        details = {
            "code": "staff_recheck",
            "before": report.before,
            "after": report.after,
            "queue_position": training.queue_position if training.finished_at is None else None,
            "error": report.error[:1000],
            "actor_id": getattr(actor, "pk", None),
        }
        _note(training, details, source, actor)
    return reports
