"""What events and stuck causes say, worded once from their code and parameters.

Events store a code and its parameters in ``details`` and the same words in English as
``message``; pages and the staff chat word them in their reader's language.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import translation
from django.utils.functional import lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from monitoring.models import AvatarEvent, AvatarStatus, EventKind, FalStatus, HoldReason


def in_language(language: str, render: Callable[..., str], *args: object) -> str:
    with translation.override(language):
        return render(*args)


def english(render: Callable[..., str], *args: object) -> str:
    return in_language("en", render, *args)


def _minutes(delta: timedelta) -> int:
    return max(int(delta.total_seconds() // 60), 0)


@dataclass(frozen=True)
class StuckCause:
    """Which limit a training has passed, and since when: worded by ``cause_words``."""

    code: str  # result_unavailable, submit_unknown, fal_unreachable, in_queue, in_progress, total
    since: datetime
    limit: timedelta
    check_failures: int = 0
    training_type: str = ""


def cause_details(cause: StuckCause) -> dict[str, object]:
    return {
        "code": cause.code,
        "since": cause.since.isoformat(),
        "limit_minutes": _minutes(cause.limit),
        "check_failures": cause.check_failures,
        "training_type": cause.training_type,
    }


def cause_from_details(details: dict) -> StuckCause | None:
    """The cause recorded by ``cause_details`` (None when the event predates codes)."""
    try:
        return StuckCause(
            code=str(details["code"]),
            since=datetime.fromisoformat(str(details["since"])),
            limit=timedelta(minutes=int(details["limit_minutes"])),
            check_failures=int(details.get("check_failures") or 0),
            training_type=str(details.get("training_type") or ""),
        )
    except (KeyError, TypeError, ValueError):
        return None


def cause_words(cause: StuckCause, now: datetime) -> str:
    values = {"age": _minutes(now - cause.since), "limit": _minutes(cause.limit)}
    if cause.code == "result_unavailable":
        return str(Said("result_unavailable"))
    if cause.code == "submit_unknown":
        until = cause.since + timedelta(hours=settings.FAL_LOST_SUBMIT_GIVE_UP_HOURS)
        return lost_submit_words(until, now >= until)
    if cause.code == "fal_unreachable":
        return _(
            "no successful check for %(age)s min (the limit is %(limit)s min; %(n)s failed in "
            "a row)"
        ) % {**values, "n": cause.check_failures}
    if cause.code == "in_queue":
        return _("in fal's queue for %(age)s min; the limit is %(limit)s min") % values
    if cause.code == "in_progress":
        return _("training on fal for %(age)s min; the limit is %(limit)s min") % values
    return _("active for %(age)s min in total; the limit is %(limit)s min") % values


def lost_submit_words(until: datetime, given_up: bool) -> str:
    """What is being done about a lost submit: no running count, so the stored reason
    changes only when what is done changes."""
    if given_up:
        return _(
            "submit outcome unknown: no matching job in fal's record after %(hours)s h; never "
            "resubmitted; an Operator may record 'fal has no such job' to make it startable"
        ) % {"hours": f"{settings.FAL_LOST_SUBMIT_GIVE_UP_HOURS:g}"}
    return _(
        "submit outcome unknown: looking for it in fal's record at every check until "
        "%(until)s UTC (never resubmitted automatically)"
    ) % {"until": f"{until:%Y-%m-%d %H:%M}"}


def status_label(value: str) -> str:
    return str(dict(AvatarStatus.choices).get(value) or dict(FalStatus.choices).get(value) or value)


def retried_words(error_type: str) -> str:
    return str(Said("retried", code=error_type or "?"))


# What a check or an outcome did (``CheckReport.summary``, ``Applied.summary``,
# ``Recovery.summary``) by code; punctuation-only templates are not for translators.
SAID = {
    "then": "%(first)s; %(then)s",
    "at_position": gettext_noop("%(words)s (position %(position)s)"),
    "moved": "%(before)s → %(after)s",
    "still": gettext_noop("still %(status)s"),
    "ended": "%(status)s: %(error_type)s: %(message)s",
    "completed": gettext_noop("completed"),
    "retried": gettext_noop("retried automatically after fal's %(code)s"),
    "held": gettext_noop("held: waiting for fal balance (nothing sent)"),
    "submit_pending": gettext_noop("waiting for fal's answer to the submit"),
    "retry_pending": gettext_noop("automatic retry, waiting to be sent"),
    "out_of_time": gettext_noop("not checked: the run ran out of time (due again at the next run)"),
    "cancel_pending": gettext_noop("cancellation requested, fal has not stopped it yet"),
    "past_run_limit": gettext_noop("past its run limit: cancelling it on fal"),
    "not_fetched": gettext_noop("completed on fal, result not fetched yet: %(error)s"),
    "fal_error": gettext_noop("fal error, checked again at the next run: %(error)s"),
    "fal_says": gettext_noop("fal says %(status)s"),
    "fal_says_error": gettext_noop("fal says %(status)s: %(error)s"),
    "queue_404": gettext_noop("queue 404"),
    "dropped": gettext_noop("cancelled (fal dropped the job)"),
    "unknown_to_fal": gettext_noop("failed: fal does not know this request"),
    "404_not_believed": gettext_noop(
        "fal answered 404 (%(count)s/%(limit)s); not believed yet: %(found)s"
    ),
    "foreign_host": gettext_noop("result URL on a foreign host, flagged stuck: %(url)s"),
    "not_https": gettext_noop("result URL is not https, training failed: %(url)s"),
    "no_lora": gettext_noop("result without a LoRA file"),
    "no_lora_ask_record": gettext_noop("fal's result has no LoRA file: fal's record decides"),
    # Also the stored stuck reason of a result that cannot be had (``fal.results``).
    "result_unavailable": gettext_noop(
        "finished on fal, but its result is not available (the queue forgot it and fal's record "
        "has no payload): the owner has not been told"
    ),
    "deadline_unconfirmed": gettext_noop(
        "run deadline passed (%(minutes)s min); fal did not confirm the cancel: %(answer)s"
    ),
    "already_finished": gettext_noop("training already finished"),
    "from_queue": gettext_noop("the result is fetched from fal's queue"),
    "record": gettext_noop("fal's record: %(words)s"),
    "record_not_asked": gettext_noop("fal's record not asked in this run (next check)"),
    "record_unreadable": gettext_noop(
        "fal's record could not be read (%(error)s); nothing decided"
    ),
    "record_unknown": gettext_noop("fal's record does not know it either"),
    "lost_not_asked": gettext_noop("lost submit: fal's record not asked in this run (next check)"),
    "lost_unreadable": gettext_noop(
        "lost submit: fal's record could not be read (%(error)s); later"
    ),
    "lost_has_id": gettext_noop("lost submit: it already has a request id"),
    "lost_found": gettext_noop("lost submit found in fal's record; %(words)s"),
    "lost_no_match": gettext_noop("lost submit: no matching job in fal's record yet"),
    "lost_no_match_unlisted": gettext_noop(
        "lost submit: no matching job in fal's record yet (%(n)s listed without their input: "
        "not counted as 'no match')"
    ),
    "lost_given_up": gettext_noop("given up, staff alerted"),
}


class Said:
    """A ``SAID`` code and its parameters (values, ``Said`` or ``status_words``): ``str()``
    words it in the active language, ``english(str, said)`` for logs and stored text."""

    def __init__(self, code: str, /, **params: object) -> None:
        self.code, self.params = code, params

    def __str__(self) -> str:
        return _(SAID[self.code]) % {name: str(value) for name, value in self.params.items()}

    def then(self, more: Said | str) -> Said:
        return Said("then", first=self, then=more)


# A stored status, worded when shown.
status_words = lazy(status_label, str)


def fal_answer_words(after: str, position: int | None, error: str) -> str:
    if error:
        return _("Checked by staff: fal did not answer (%(error)s).") % {"error": error[:300]}
    if after == FalStatus.IN_QUEUE and position is not None:
        return _("Checked by staff: fal says IN_QUEUE, position %(position)s.") % {
            "position": position
        }
    if after in (FalStatus.IN_QUEUE, FalStatus.IN_PROGRESS, FalStatus.COMPLETED):
        return _("Checked by staff: fal says %(status)s.") % {"status": status_label(after)}
    return _("Checked by staff: the training is now %(status)s.") % {"status": status_label(after)}


def held_words(reason: str) -> str:
    return _(
        "held, not sent: waiting for fal balance (%(reason)s); it is sent by itself "
        "once the balance is back."
    ) % {"reason": HoldReason(reason).label if reason in HoldReason.values else reason}


def note_words(details: dict) -> str:
    """A coded note's text in the active language ("": no code known here)."""
    code = details.get("code")
    if code == "run_deadline":
        return _(
            "run deadline passed (%(minutes)s min): cancelling on fal, retried once fal confirms"
        ) % {"minutes": details.get("minutes", "?")}
    if code == "held":
        text = held_words(details.get("reason", "?"))
        return f"{text} fal: {details['detail']}" if details.get("detail") else text
    if code == "submit_lost":
        return _(
            "fal's answer to the submit was lost (%(error)s); not resubmitted, looking it up in "
            "fal's record"
        ) % {"error": details.get("error", "?")}
    if code == "staff_recheck":
        return fal_answer_words(
            details.get("after", ""), details.get("queue_position"), details.get("error", "")
        )
    return ""


def event_words(event: AvatarEvent) -> str:
    """In the active language where the event has a code, else as recorded."""
    details = event.details or {}
    if event.kind == EventKind.RETRIED:
        return retried_words(details.get("error_type", ""))
    if event.kind == EventKind.STUCK and (cause := cause_from_details(details)) is not None:
        return cause_words(cause, event.created_at)
    return note_words(details) or event.message
