"""The periodic status check: claim the due trainings, ask fal about them, apply what changed;
the startup restore. See docs/architecture.md#the-periodic-check.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone, translation
from django.utils.translation import ngettext
from django_q.models import Schedule
from django_q.tasks import async_task

from monitoring import eta, owner_progress, recovery, stuck, totals, transitions
from monitoring.fal import client as fal
from monitoring.fal import platform, results
from monitoring.fal.outcome import AnsweredBy, FalOutcome
from monitoring.models import AvatarStatus, CheckRun, EventSource, FalStatus, Training
from monitoring.ops.schedules import PERIODIC_CHECK
from monitoring.wording import Said, status_words
from notifications import delivery, outbox

logger = logging.getLogger("monitoring")

# Logs grow with the job: fetched on one in-progress check in this many (and every staff one).
LOGS_EVERY_N_CHECKS = 5
LOGS_TAIL_LINES = 5
# Calls in flight per fal-client: httpcore's pool bookkeeping costs CPU with the square of
# its size on every request; 10 per client cost half the CPU of 20 (bench/check_run.py).
CALLS_PER_CLIENT = 10

# Never read by a check (the rest is, by the stuck rules, the outcome path and the ETA).
_UNREAD_FIELDS = (
    "gateway_request_id",
    "status_url",
    "response_url",
    "cancel_url",
    "webhook_url",
    "lora_url",
    "config_url",
    "result",
    "error_type",
    "error_message",
    "owner_message",
    "staff_note",
    "held_since",
    "held_reason",
    "cost_state",
    "cost_nano_usd",
    "cost_units",
    "cost_unit_price",
    "cost_lookups",
    "cost_next_lookup_at",
)


@dataclass
class CheckReport:
    """What one check of one training saw and did (for staff tools and the run's counts)."""

    training_id: int
    avatar_id: int
    before: str
    after: str
    changed: bool = False
    summary: Said | str = ""  # worded when shown (monitoring.wording)
    error: str = ""
    checked: bool = True
    fal_error: bool = False


@dataclass
class _Seen:
    """fal's answers for one training, gathered in the network phase (no database)."""

    report: fal.FalStatusReport | None = None
    result: dict | None = None
    error: fal.FalError | None = None
    skipped: bool = False


def _interval() -> timedelta:
    return timedelta(seconds=settings.CHECK_INTERVAL_SECONDS)


def _budget_seconds() -> float:
    """Well inside the interval and the task timeout."""
    limit = min(settings.CHECK_INTERVAL_SECONDS, settings.Q_CLUSTER.get("timeout") or 60)
    return max(1.0, 0.75 * limit)


def _lease() -> timedelta:
    return timedelta(seconds=settings.CHECK_LEASE_SECONDS)


def claim_due(run_start: datetime, *, limit: int = 100_000) -> list[int]:
    """Lease the due active trainings to this run: one statement, so two claimers never
    both get a row (PostgreSQL skips locked rows, re-checks rows changed since its snapshot)."""
    # Its batches recognise their trainings by this lease; shorter than the interval, so a
    # dead run's trainings are soon due again.
    lease_until = run_start + _lease()
    # A run may fire a little early; what falls due within the grace is taken now (never
    # as far ahead as a live batch's renewed lease, which keeps 2/3 of it).
    horizon = run_start + min(timedelta(seconds=5), _interval() / 10, _lease() / 3)
    table = Training._meta.db_table
    if connection.vendor == "postgresql":
        # A locking CTE is computed once; an IN (subquery) form can be planned as a nested
        # loop re-running the subquery per row (14 s for 10,000 rows).
        sql = (
            f"WITH due AS (SELECT id FROM {table} WHERE finished_at IS NULL "
            f"AND next_check_at <= %s ORDER BY next_check_at LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"UPDATE {table} AS t SET next_check_at = %s FROM due WHERE t.id = due.id "
            f"RETURNING t.id"
        )
        params: list[Any] = [horizon, limit, lease_until]
    else:
        # SQLite: one statement holds the write lock, so the condition is enough.
        sql = (
            f"UPDATE {table} SET next_check_at = %s WHERE id IN (SELECT id FROM {table} "
            f"WHERE finished_at IS NULL AND next_check_at <= %s ORDER BY next_check_at LIMIT %s) "
            f"RETURNING id"
        )
        params = [lease_until, horizon, limit]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return sorted(row[0] for row in cursor.fetchall())


def _wants_logs(training: Training, run_start: datetime, source: str) -> bool:
    if training.fal_status != FalStatus.IN_PROGRESS:
        return False
    if source != EventSource.CHECK:
        return True
    slot = int(run_start.timestamp() // settings.CHECK_INTERVAL_SECONDS)
    return (slot + training.pk) % LOGS_EVERY_N_CHECKS == 0


async def _ask_all(
    trainings: list[Training], run_start: datetime, source: str, budget: float
) -> list[_Seen]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    clients = max(1, math.ceil(settings.CHECK_CONCURRENCY / CALLS_PER_CLIENT))
    per_client = math.ceil(settings.CHECK_CONCURRENCY / clients)
    try:
        slots = [(fal.FalSession(), asyncio.Semaphore(per_client)) for _ in range(clients)]
    except fal.FalError as exc:  # no key configured: every check answers the same
        return [_Seen(error=exc) if t.fal_request_id else _Seen() for t in trainings]

    async def ask(index: int, training: Training) -> _Seen:
        if not training.fal_request_id:
            return _Seen()
        session, pool = slots[index % clients]
        async with pool:
            remaining = deadline - loop.time()
            if remaining <= 0.05:
                return _Seen(skipped=True)
            seen = _Seen()
            try:
                seen.report = await session.status(
                    training.endpoint,
                    training.fal_request_id,
                    with_logs=_wants_logs(training, run_start, source),
                    timeout=min(session.timeout, remaining),
                )
                if seen.report.status == "COMPLETED" and not seen.report.error:
                    seen.result = await session.result(
                        training.endpoint,
                        training.fal_request_id,
                        timeout=min(session.timeout, max(deadline - loop.time(), 0.05)),
                    )
            except fal.FalError as exc:
                seen.error = exc
            return seen

    try:
        return await asyncio.gather(*(ask(i, t) for i, t in enumerate(trainings)))
    finally:
        for session, _pool in slots:
            await session.__aexit__(None, None, None)


def _state(training: Training) -> str:
    if training.finished_at is not None:
        return training.outcome or "finished"
    return str(training.fal_status)


def _report(training: Training) -> CheckReport:
    return CheckReport(training.pk, training.avatar_id, _state(training), _state(training))


class _Batch:
    """Applies one batch of answers, collecting the routine writes for bulk UPDATEs."""

    def __init__(self, source: str, run_start: datetime, now: datetime) -> None:
        self.source = source
        self.run_start = run_start
        self.now = now
        self.ok_ids: list[int] = []
        self.moved: list[Training] = []  # queue position or logs changed
        self.failed: list[Training] = []  # check failure fields changed
        self.fal_errors: collections.Counter[str] = collections.Counter()
        self.account_alerted = False
        # Network work a check decides on but leaves to a task each, after the batch.
        self.tasks: list[tuple[str, int]] = []
        # fal's record is asked one training after another: bounded so that a batch of
        # forgotten results cannot run past the task's timeout (the rest wait a check).
        self._record_until = time.monotonic() + _budget_seconds() / 2
        self._record: platform.PlatformClient | None = None
        # ETA histories, loaded once per batch; trainings whose progress message may change.
        self._histories: dict[eta.Key, eta.History] = {}
        self.progressed: list[Training] = []

    @functools.cached_property
    def next_due(self) -> datetime:
        return next_due(self.run_start)

    def apply(self, training: Training, seen: _Seen) -> CheckReport:
        report = _report(training)
        if not training.fal_request_id:
            if not recovery.is_lost_submit(training, self.now):  # never a held one
                report.checked = False
                waiting = {FalStatus.HELD.value: "held", FalStatus.NOT_SENT.value: "retry_pending"}
                report.summary = Said(waiting.get(training.fal_status, "submit_pending"))
                if (
                    training.fal_status == FalStatus.NOT_SENT
                    and self.now - training.created_at >= _interval()
                ):
                    self.tasks.append(("monitoring.tasks.send_attempt", training.pk))
                return report
            self._lost_submit(training, report)
        elif seen.skipped:
            report.checked = False
            report.summary = Said("out_of_time")
            training.next_check_at = self.now
            self.failed.append(training)
            return report
        elif seen.error is not None and seen.report is None:
            self._fal_error(training, seen.error, report)
        elif seen.report is not None:
            self._status(training, seen, report)
        report.after = _state(training)
        return report

    def _status(self, training: Training, seen: _Seen, report: CheckReport) -> None:
        answer = seen.report
        assert answer is not None
        if answer.status == "COMPLETED":
            self._completed(training, seen, report)
            return
        position = answer.queue_position if answer.status == "IN_QUEUE" else None
        was = (training.fal_status, training.queue_position, training.last_checked_at)
        if answer.status != training.fal_status:
            transitions.record_fal_status(
                training, fal_status=answer.status, queue_position=position, source=self.source
            )
            report.changed = True
            summary = Said(
                "moved", before=status_words(report.before), after=status_words(answer.status)
            )
        else:
            summary = Said("still", status=status_words(answer.status))
        tail = None
        if answer.logs:
            entries = answer.logs[-LOGS_TAIL_LINES:]
            lines = [str(entry.get("message", "")) for entry in entries if isinstance(entry, dict)]
            tail = "\n".join(lines)[-2000:]
        moved = False
        if answer.status == "IN_QUEUE" and training.queue_position != position:
            training.queue_position = position
            moved = True
            summary = Said("at_position", words=summary, position=position)
        if tail is not None and tail != training.logs_tail:
            training.logs_tail = tail
            moved = True
        if self._estimate(training, was, logs_fresh=tail is not None) or moved:
            self.moved.append(training)
        if training.cancel_requested_at:
            summary = summary.then(Said("cancel_pending"))
        if stuck.past_run_limit(training, self.now):
            summary = summary.then(Said("past_run_limit"))
            self.tasks.append(("monitoring.tasks.cancel_for_deadline", training.pk))
        report.summary = summary
        self._ok(training)

    def _completed(self, training: Training, seen: _Seen, report: CheckReport) -> None:
        assert seen.report is not None
        refused = seen.error if isinstance(seen.error, fal.FalJobFailed) else None
        outcome = FalOutcome.from_queue(seen.report, seen.result, refused)
        if outcome is None:
            # Finished on fal, result not fetched yet: note it and try again next check.
            if training.fal_status != FalStatus.COMPLETED:
                transitions.record_fal_status(
                    training, fal_status=FalStatus.COMPLETED, source=self.source
                )
            self._fal_error(training, seen.error or fal.FalTransient("empty result"), report)
            # On a 404 the queue forgot the result it just said was there: fal's record decided.
            if not isinstance(seen.error, fal.FalNotFound):
                report.summary = Said("not_fetched", error=report.error)
            return
        applied = results.apply(training, outcome, source=self.source)
        report.changed, report.summary = applied.changed, applied.summary
        if applied.look_next == AnsweredBy.RECORD:
            found = self._from_record(training, report, why="no_lora")
            if not found.decided:
                report.summary = Said("then", first=applied.summary, then=found.summary)
            if training.finished_at is None:
                self._ok(training)  # fal answered; only the result is being looked for

    def _fal_error(self, training: Training, error: fal.FalError, report: CheckReport) -> None:
        report.error = str(error)[:1000]
        report.fal_error = True
        self.fal_errors[type(error).__name__] += 1
        if isinstance(error, fal.FalNotFound):
            self._not_found(training, report)
            return
        if isinstance(error, fal.FalAuthError) and not self.account_alerted:
            # Our key or fal's billing, not the avatar: tell staff, fail nothing.
            outbox.queue_fal_account_alert(
                status_code=error.status_code or 401, detail=error.detail
            )
            self.account_alerted = True
        training.check_failures += 1
        training.last_check_error = report.error
        # One training's bad answer costs it nothing: due again at the next interval.
        # Holding back belongs to fal failing for everyone (_judge_fal_outage).
        training.next_check_at = self.next_due
        training.last_checked_at = self.now
        self.failed.append(training)
        report.summary = Said("fal_error", error=report.error)

    def _estimate(
        self, training: Training, was: tuple[str, int | None, Any], *, logs_fresh: bool
    ) -> bool:
        """Recompute the ETA (monitoring.eta); True when a stored field changed."""
        old_status, old_position, last_seen = was
        key = eta.key_of(training.endpoint, training.arguments)
        if key not in self._histories:
            self._histories.update(eta.load([key]))
        seen_seconds = None
        if old_status == training.fal_status == FalStatus.IN_QUEUE and last_seen is not None:
            seen_seconds = (self.now - last_seen).total_seconds()
        changed = False
        if training.queue_position_first is None and training.queue_position is not None:
            training.queue_position_first = training.queue_position
            changed = True
        phase = owner_progress.phase_of(training)
        changed = (
            eta.refresh(
                training,
                self._histories[key],
                now=self.now,
                old_position=old_position,
                seen_seconds=seen_seconds,
                logs_fresh=logs_fresh,
            )
            or changed
        )
        if (
            changed
            or old_status != training.fal_status
            or phase != owner_progress.phase_of(training)
        ):
            self.progressed.append(training)
        return changed

    def _record_client(self) -> platform.PlatformClient | None:
        """One client per batch, while the batch's record budget lasts."""
        if time.monotonic() > self._record_until:
            return None
        if self._record is None:
            try:
                self._record = platform.PlatformClient()
            except platform.PlatformUnavailable:
                return None
        return self._record

    def close(self) -> None:
        if self._record is not None:
            self._record.__exit__(None, None, None)
            self._record = None

    def _lost_submit(self, training: Training, report: CheckReport) -> None:
        client = self._record_client()
        if client is None:
            report.summary = Said("lost_not_asked")
            return
        found = recovery.lookup_lost_submit(training, via=self.source, now=self.now, client=client)
        report.summary, report.changed = found.summary, found.changed

    def _from_record(
        self, training: Training, report: CheckReport, why: str = "queue_404"
    ) -> recovery.Recovery:
        client = self._record_client()
        if client is None:
            return recovery.Recovery(False, Said("record_not_asked"))
        found = recovery.recover_from_record(training, via=self.source, client=client)
        if found.decided:
            report.changed = found.changed
            report.summary = Said(why).then(found.summary)
        return found

    def _not_found(self, training: Training, report: CheckReport) -> None:
        found = self._from_record(training, report)
        if found.decided:
            if training.finished_at is None:
                self._ok(training)  # fal's record answered: not a failed check
            return
        if training.cancel_requested_at and found.in_record is False:
            report.changed = transitions.cancel(
                training, source=self.source, reason="fal no longer knows the job after the cancel"
            ).changed
            report.summary = Said("dropped")
            return
        training.not_found_count += 1
        training.not_found_since = training.not_found_since or self.now
        # Only a request that fal's record does not know either may be failed; a record
        # that could not be read decides nothing.
        if (
            found.in_record is False
            and training.not_found_count >= settings.FAL_NOT_FOUND_CONFIRM_COUNT
            and self.now - training.not_found_since
            >= timedelta(minutes=settings.FAL_NOT_FOUND_CONFIRM_MINUTES)
        ):
            report.changed = transitions.fail(
                training,
                error_message=(
                    f"fal does not know this request (404 on {training.not_found_count} "
                    f"consecutive checks since {training.not_found_since:%Y-%m-%d %H:%M} UTC)"
                ),
                error_type="not_found",
                source=self.source,
            ).changed
            report.summary = Said("unknown_to_fal")
            return
        training.last_check_error = report.error
        training.last_checked_at = self.now
        self.failed.append(training)
        report.summary = Said(
            "404_not_believed",
            count=training.not_found_count,
            limit=settings.FAL_NOT_FOUND_CONFIRM_COUNT,
            found=found.summary,
        )

    def _ok(self, training: Training) -> None:
        training.check_failures = 0
        training.not_found_count = 0
        training.not_found_since = None
        training.last_check_ok_at = self.now
        self.ok_ids.append(training.pk)

    def flush(self) -> None:
        for task, training_id in self.tasks:
            async_task(task, training_id, task_name=f"{task.rsplit('.', 1)[-1]} {training_id}")
        for error_class, count in self.fal_errors.items():
            totals.add("fal_errors", {"class": error_class}, count)
        if self.ok_ids:
            Training.objects.active().filter(pk__in=self.ok_ids).update(
                last_checked_at=self.now,
                last_check_ok_at=self.now,
                check_failures=0,
                last_check_error="",
                not_found_count=0,
                not_found_since=None,
            )
        _write(self.moved, ["queue_position", "logs_tail", "queue_position_first", *eta.FIELDS])
        _write(
            self.failed,
            [
                "check_failures",
                "last_check_error",
                "last_checked_at",
                "next_check_at",
                "not_found_count",
                "not_found_since",
            ],
        )


def _write(trainings: list[Training], fields: list[str]) -> None:
    """Store these fields of active trainings: one UPDATE each, in one round trip
    (``bulk_update``'s CASE over every row costs the square of the batch)."""
    if not trainings:
        return
    concrete = {field.name: field for field in Training._meta.concrete_fields}
    columns = [concrete[name] for name in fields]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(str(field.column))} = %s" for field in columns)
    table = Training._meta.db_table
    sql = f"UPDATE {table} SET {assignments} WHERE id = %s AND finished_at IS NULL"
    rows = [
        [field.get_db_prep_save(getattr(t, field.attname), connection) for field in columns]
        + [t.pk]
        for t in trainings
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def check_trainings(
    trainings: Iterable[Training],
    *,
    source: str,
    dry_run: bool = False,
    run_start: datetime | None = None,
) -> list[CheckReport]:
    """Check these trainings on fal now and apply what fal says (unless ``dry_run``)."""
    trainings = [t for t in trainings if t.finished_at is None]
    if not trainings:
        return []
    run_start = run_start or timezone.now()
    for training in trainings:
        logger.info(
            "🔍 Проверка статуса аватара %s (request_id=%s, fal_status=%s, source=%s)",
            training.avatar_id,
            training.fal_request_id or "-",
            training.fal_status,
            source,
            extra={"avatar_id": training.avatar_id, "request_id": training.fal_request_id},
        )
    seen = asyncio.run(_ask_all(trainings, run_start, source, _budget_seconds()))

    if dry_run:
        return [_dry_report(t, s) for t, s in zip(trainings, seen, strict=True)]

    now = timezone.now()
    batch = _Batch(source, run_start, now)
    reports: list[CheckReport] = []
    try:
        for training, answer in zip(trainings, seen, strict=True):
            try:
                reports.append(batch.apply(training, answer))
            except Exception as exc:  # one bad row must not stop the batch
                logger.exception("Check of avatar %s failed", training.avatar_id)
                reports.append(_report(training))
                reports[-1].error = repr(exc)[:1000]
        batch.flush()
        owner_progress.checked(batch.progressed)
    finally:
        batch.close()  # the batch's Platform API client, if it opened one
    still_active = [t for t in trainings if t.finished_at is None]
    stuck.review(still_active, now, source=source)
    owner_progress.review_delays(still_active, now)
    return reports


def _dry_report(training: Training, seen: _Seen) -> CheckReport:
    report = _report(training)
    if seen.error is not None:
        report.error = str(seen.error)
        report.fal_error = True
    if seen.report is not None:
        answer = seen.report
        report.after = "error" if answer.failed else answer.status
        report.changed = report.after != report.before
        report.summary = Said(
            "fal_says_error" if answer.error else "fal_says",
            status=status_words(answer.status),
            error=answer.error,
        )
    elif not training.fal_request_id:
        report.checked = False
        report.summary = Said("submit_pending")
    return report


def _move_lease(ids: list[int], expected: datetime, new: datetime) -> list[int]:
    """Set ``next_check_at`` to ``new`` on those of ``ids`` still at ``expected`` (raw SQL
    like the claim, so both sides of the comparison are written alike on every database)."""
    if not ids:
        return []
    table = Training._meta.db_table
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET next_check_at = %s WHERE id IN ({marks}) "
            f"AND finished_at IS NULL AND next_check_at = %s RETURNING id",
            [new, *ids, expected],
        )
        return sorted(row[0] for row in cursor.fetchall())


@contextmanager
def _leased(ids: list[int], token: datetime, hand_back: datetime) -> Iterator[list[int]]:
    """Yield the trainings taken over, renewed (in a thread with its own connection: the batch
    is busy in its event loop), handed back due at ``hand_back`` (kept leased on an error)."""
    current = timezone.now() + _lease()
    held = _move_lease(ids, token, current)
    done = threading.Event()

    def renew() -> None:
        nonlocal current
        try:
            # Only this thread moves the lease until it has been joined.
            while not done.wait(settings.CHECK_LEASE_SECONDS / 3):
                new = timezone.now() + _lease()
                _move_lease(held, current, new)
                current = new
        except Exception:  # the lease then simply expires: the trainings are due again
            logger.exception("Could not renew the lease of a check batch")
        finally:
            connection.close()

    thread = threading.Thread(target=renew, name="lease-keeper", daemon=True)
    if held:
        thread.start()
    try:
        yield held
    finally:
        done.set()
        if held:
            thread.join()
    _move_lease(held, current, hand_back)


def check_batch(
    training_ids: list[int], run_id: int | None, run_start: datetime
) -> list[CheckReport]:
    # What the checks do not reschedule themselves is due one interval after the run.
    due = next_due(run_start)
    with _leased(training_ids, run_start + _lease(), due) as held:
        # Only what this run still holds: a batch redelivered by the broker after its
        # worker died finds its trainings leased again (or checked) by a later run.
        trainings = list(Training.objects.active().filter(pk__in=held).defer(*_UNREAD_FIELDS))
        for training in trainings:
            training.next_check_at = due  # unless the check decides otherwise
        reports = check_trainings(trainings, source=EventSource.CHECK, run_start=run_start)
    if run_id is not None:
        now = timezone.now()
        counts = {
            "checked": sum(r.checked for r in reports),
            "changed": sum(r.changed for r in reports),
            "completed": sum(r.changed and r.after == AvatarStatus.COMPLETED for r in reports),
            "failed": sum(r.changed and r.after == AvatarStatus.ERROR for r in reports),
            "errors": sum(r.fal_error for r in reports),
        }
        CheckRun.objects.filter(pk=run_id).update(
            finished_at=now,
            duration_seconds=(now - run_start).total_seconds(),
            **{name: F(name) + value for name, value in counts.items()},
        )
        _judge_fal_outage(run_id)
    return reports


def fal_outage_since(before: datetime | None = None) -> datetime | None:
    """When the fal outage going on began, as the latest run that asked fal recorded it."""
    runs = CheckRun.objects.filter(checked__gt=0)
    if before is not None:
        runs = runs.filter(started_at__lt=before)
    return runs.order_by("-started_at").values_list("fal_outage_since", flat=True).first()


def _judge_fal_outage(run_id: int) -> None:
    """Record a fal-wide failure (FAL_OUTAGE_ERROR_SHARE of at least FAL_OUTAGE_MIN_CALLS
    calls) on the run, telling staff once per episode; a run that succeeds ends it."""
    run = CheckRun.objects.filter(pk=run_id).values("started_at", "checked", "errors").get()
    calls, errors = run["checked"], run["errors"]
    if not calls or errors < settings.FAL_OUTAGE_ERROR_SHARE * calls:
        return
    going_on = fal_outage_since(before=run["started_at"])
    if calls < settings.FAL_OUTAGE_MIN_CALLS and going_on is None:
        return  # too few calls to say fal is down for everyone
    since = going_on or run["started_at"]
    recorded = CheckRun.objects.filter(pk=run_id, fal_outage_since__isnull=True).update(
        fal_outage_since=since
    )
    if recorded and going_on is None:
        logger.error(
            "fal is failing for everyone: %s of %s status calls failed; checking a sample "
            "of %s trainings per interval until a run succeeds",
            errors,
            calls,
            settings.FAL_OUTAGE_MIN_CALLS,
        )
        outbox.queue_fal_outage_alert(since=since, failed=errors, calls=calls)


def next_due(run_start: datetime) -> datetime:
    """When a training checked by the run that started at ``run_start`` is due again: one
    interval on, or the next scheduled run when sooner (after a restore or manual run)."""
    due = run_start + _interval()
    scheduled = (
        Schedule.objects.filter(name=PERIODIC_CHECK).values_list("next_run", flat=True).first()
    )
    # A scheduled run within the claim's grace would find them due anyway; an overdue
    # one fires within the scheduler's tick and then runs an interval on.
    grace = min(timedelta(seconds=5), _interval() / 10)
    if scheduled is not None and run_start + grace < scheduled < due:
        return scheduled
    return due


def run_periodic_check(kind: str = CheckRun.Kind.SCHEDULED) -> CheckRun:
    """One run: claim what is due, check it (inline or fanned out), sweep the outbox."""
    started = time.monotonic()
    run_start = timezone.now()
    run = CheckRun.objects.create(kind=kind, started_at=run_start)
    # During a fal outage only a sample, enough to tell when it ends.
    ids = claim_due(
        run_start, limit=settings.FAL_OUTAGE_MIN_CALLS if fal_outage_since() else 100_000
    )
    size = settings.CHECK_BATCH_SIZE
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]
    fields: dict[str, Any] = {"due": len(ids)}
    if len(batches) <= 1:
        check_batch(ids, run.pk, run_start)
    else:
        for batch in batches:
            async_task(
                "monitoring.tasks.check_batch",
                batch,
                run.pk,
                run_start.isoformat(),
                task_name=f"check batch of run {run.pk}",
            )
        fields["notes"] = f"fanned out as {len(batches)} batches of up to {size}"
    try:  # hand the sender anything due: lost hand-overs, expired leases
        delivery.sweep()
    except Exception:  # a sender problem must not fail the check run
        logger.exception("Notification sweep failed")
    if len(batches) <= 1:
        fields.update(
            finished_at=timezone.now(), duration_seconds=round(time.monotonic() - started, 3)
        )
    CheckRun.objects.filter(pk=run.pk).update(**fields)
    run.refresh_from_db()
    return run


def restore_monitoring(*, enqueue: bool = True) -> int:
    """Make the active trainings due now and enqueue a run; returns how many are active."""
    now = timezone.now()
    active = Training.objects.filter(finished_at__isnull=True).exclude(fal_status=FalStatus.HELD)
    count = active.count()
    active.exclude(last_checked_at__gte=now - _interval()).update(next_check_at=now)
    if enqueue:
        async_task(
            "monitoring.tasks.run_check", CheckRun.Kind.RESTORE, task_name="startup restore check"
        )
    # The operator's log line is Russian whatever the process's language; the plural
    # ("для 1 аватара", "для 5 аватаров") comes from the catalogue.
    with translation.override("ru"):
        line = ngettext(
            "✅ Monitoring restored for %(n)s avatar",
            "✅ Monitoring restored for %(n)s avatars",
            count,
        ) % {"n": count}
    logger.info(line)
    return count
