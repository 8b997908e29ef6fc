"""A fal webhook delivery and its behaviour: stored first, then processed (dj-stripe's order).
Every POST leaves a row or a count (docs/fal.md, "The webhook intake").
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, Manager, OuterRef, Sum
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext

from avatarsite.client_address import client_address
from monitoring import totals, wording
from monitoring.fal import results, signature
from monitoring.fal.outcome import AnsweredBy, FalOutcome, Kind
from monitoring.fal.signature import REQUEST_ID_HEADER, SIGNATURE_HEADER, clean
from monitoring.models import (
    EventSource,
    RefusedWebhookCount,
    Training,
    WebhookDelivery,
    WebhookOutcome,
    WebhookVerdict,
)

logger = logging.getLogger("monitoring")

EXCERPT_BYTES = 256  # what a refused (or replayed) delivery keeps of its body
ROW_OVERHEAD_BYTES = 900
# An unmatched delivery kept whole, to be applied when its request id appears (larger: an excerpt).
UNMATCHED_BODY_BYTES = 64 * 1024
# fal gives up on a delivery after 15 s: a row still "received" then was left by a crash.
STRANDED_AFTER = timedelta(seconds=15)
SWEEP_BATCH = 100
# Acted on: the same signature again is a replay (fal's retry of a failed one is not).
_O = WebhookOutcome
ACCEPTED_OUTCOMES = (_O.APPLIED, _O.ALREADY_DONE, _O.UNMATCHED, _O.DEFERRED)
REPROCESSABLE_OUTCOMES = (_O.FAILED, _O.UNMATCHED, _O.DEFERRED, _O.RECEIVED)
# What finishing a training reads (transitions, outbox, owner message, API callback):
# a field left out costs a query of its own (tests/test_webhooks_statements.py).
_LOOKUP_FIELDS = """avatar_id fal_request_id endpoint fal_status finished_at outcome owner_message
    stuck_since stuck_reason error_type error_message gateway_request_id cancel_requested_at
    avatar__owner_id avatar__name avatar__training_type avatar__status avatar__current_training_id
    avatar__owner__telegram_id avatar__owner__language attempt start_deadline_seconds
    deadline_cancel_at created_at""".split()


class _ProcessedElsewhere(Exception):
    """Another process recorded this delivery's outcome first: ours rolls back."""


def _count(verdict: str, outcome: str) -> None:
    totals.add("webhook_deliveries", {"verdict": verdict, "outcome": outcome})


class Delivery(WebhookDelivery):
    """A ``WebhookDelivery`` row with what it does (a proxy: same table)."""

    objects: ClassVar[Manager[Delivery]]  # the parent's, typed
    _raw: bytes = b""

    class Meta:
        proxy = True

    @classmethod
    def from_request(
        cls,
        request: HttpRequest,
        body: bytes,
        *,
        received_at: datetime,
        size: int | None = None,
        verified: bool = False,
    ) -> Delivery:
        """An unsaved row of what came in; ``keep`` saves it."""
        headers = signature.stored_headers(request, verified=verified)
        size = len(body) if size is None else size
        row = cls(
            received_at=received_at,
            remote_addr=client_address(request),
            headers=headers,
            header_request_id=headers.get(REQUEST_ID_HEADER, ""),
            signature=headers.get(SIGNATURE_HEADER, ""),
            body_size=min(size, 2**31 - 1),
            body_sha256=hashlib.sha256(body).hexdigest() if size == len(body) else "",
        )
        row._raw = body
        return row

    def keep_refused(self, verdict: str, reason: str, outcome: str) -> None:
        """Count a delivery not acted on; keep its row while this minute's caps allow."""
        self.verdict, self.outcome, self.error = verdict, outcome, clean(reason, 2000)
        minute = self.received_at.replace(second=0, microsecond=0)
        # What this row costs the disk as an excerpt (overhead measured on PostgreSQL).
        texts = json.dumps(self.headers) + self.error + self.header_request_id + self.signature
        size = len(self._raw[:EXCERPT_BYTES]) + len(texts.encode()) + ROW_OVERHEAD_BYTES
        # This minute's count, this one included, in one upsert: no UPDATE/INSERT race.
        table = RefusedWebhookCount._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (minute, verdict, count, kept_bytes) VALUES (%s, %s, 1, 0) "
                f"ON CONFLICT (minute, verdict) DO UPDATE SET count = {table}.count + 1 "
                f"RETURNING count",
                [connection.ops.adapt_datetimefield_value(minute), verdict],
            )
            refusals = int(cursor.fetchone()[0])
        this_minute = RefusedWebhookCount.objects.filter(minute=minute)
        if (
            refusals > settings.WEBHOOK_REFUSED_ROWS_PER_MINUTE
            or (this_minute.aggregate(total=Sum("kept_bytes"))["total"] or 0) + size
            > settings.WEBHOOK_REFUSED_BYTES_PER_MINUTE
        ):
            _count(verdict, outcome)
            return
        this_minute.filter(verdict=verdict).update(kept_bytes=F("kept_bytes") + size)
        self.keep(excerpt=True)

    def keep(self, *, excerpt: bool = False) -> None:
        """Save the row with the body whole, or as an excerpt."""
        raw = self._raw[:EXCERPT_BYTES] if excerpt else self._raw
        self.body = clean(raw.decode("utf-8", errors="replace"))
        if self.outcome != WebhookOutcome.RECEIVED:
            self.processed_at = timezone.now()
            # A received row is counted when its outcome is written (``process``).
            _count(self.verdict, self.outcome)
        self.save(force_insert=True)

    @classmethod
    def receive(
        cls, request: HttpRequest, body: bytes, data: dict[str, Any], received_at: datetime
    ) -> str:
        """Store a verified delivery, then process it when it is for an active training."""
        row = cls.from_request(request, body, received_at=received_at, verified=True)
        row.verdict = WebhookVerdict.VALID
        row.request_id = clean(data["request_id"], 128)
        row.fal_status = clean(str(data["status"]), 16)
        try:
            training, replay = _training_and_replay(data["request_id"], row.signature)
            row.training = training
            if replay:
                reason = "replay of an accepted delivery with the same signature"
                row.keep_refused(WebhookVerdict.VALID, reason, WebhookOutcome.REPLAY)
                return WebhookOutcome.REPLAY
            if training is None:
                row.outcome = WebhookOutcome.UNMATCHED
                row.keep(excerpt=len(body) > UNMATCHED_BODY_BYTES)
                return row.outcome
            if training.finished_at is not None:
                # An attempt that has finished never changes again: nothing to process.
                avatar = training.avatar
                row.outcome, row.error = WebhookOutcome.ALREADY_DONE, f"already {avatar.status}"
                if avatar.current_training_id != training.pk:
                    row.error = "stale training attempt: the avatar has a newer one"
                row.keep()
                return row.outcome
            # Committed as received before it is applied: a crash leaves it to the sweep.
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    # Its WAL flush can wait: the processing commit flushes it before 200.
                    with connection.cursor() as cursor:
                        cursor.execute("SET LOCAL synchronous_commit TO OFF")
                row.outcome = WebhookOutcome.RECEIVED
                row.keep()
        except Exception as exc:
            # Not even stored as received: kept as failed, answered 5xx so fal retries.
            logger.exception("fal webhook delivery for %s could not be stored", row.request_id)
            row.pk, row.outcome = None, WebhookOutcome.FAILED
            row.error, row.traceback = _failure(exc)
            row.keep()
            return row.outcome
        return row.process(data, training)

    def process(
        self,
        data: dict[str, Any] | None = None,
        training: Training | None = None,
        *,
        source: str = EventSource.WEBHOOK,
        actor: Any = None,
    ) -> str:
        """Apply a ``received`` row and record its outcome (a conditional UPDATE on
        ``received``: of two processes, the one that finds it processed rolls back)."""
        rows = Delivery.objects.filter(pk=self.pk, outcome=WebhookOutcome.RECEIVED)
        try:
            with transaction.atomic():
                outcome, note = self._apply(data, training, source=source, actor=actor)
                if not rows.update(
                    outcome=outcome,
                    error=clean(note, 2000),
                    traceback="",
                    training=self.training,
                    processed_at=timezone.now(),
                ):
                    raise _ProcessedElsewhere
                _count(self.verdict, outcome)
        except _ProcessedElsewhere:
            current = Delivery.objects.filter(pk=self.pk).values_list("outcome", flat=True)
            return current.first() or WebhookOutcome.ALREADY_DONE
        except Exception as exc:
            logger.exception("fal webhook delivery %s could not be processed", self.pk)
            error, trace = _failure(exc)
            if rows.update(
                outcome=WebhookOutcome.FAILED,
                error=error,
                traceback=trace,
                processed_at=timezone.now(),
            ):
                _count(self.verdict, WebhookOutcome.FAILED)
            return WebhookOutcome.FAILED
        return outcome

    def _apply(
        self, data: dict[str, Any] | None, training: Training | None, *, source: str, actor: Any
    ) -> tuple[str, str]:
        # A whole body never encodes shorter than it arrived (a replaced byte grows).
        excerpt = data is None and len(self.body.encode("utf-8")) < self.body_size
        if data is None and not excerpt:
            data = signature.parse(self.body.encode("utf-8"), self.header_request_id)
        if training is None:
            rows = Training.objects.select_related("avatar__owner")
            training = rows.for_request(data["request_id"] if data else self.request_id).first()
        self.training = training
        if training is None:
            return WebhookOutcome.UNMATCHED, ""
        if data is None:  # too large to have been kept whole: fal's queue has the result
            outcome = FalOutcome(
                Kind.NO_LORA,
                AnsweredBy.WEBHOOK,
                message="body was too large to keep; the result is fetched from fal's queue",
                has_payload=False,
            )
        else:
            outcome = FalOutcome.from_webhook(data)
        applied = results.apply(training, outcome, source=source, actor=actor)
        if applied.look_next == AnsweredBy.QUEUE:
            return WebhookOutcome.DEFERRED, outcome.message
        summary = wording.english(str, applied.summary)  # the row keeps English
        if not applied.changed:
            return WebhookOutcome.ALREADY_DONE, summary
        # A result URL refused or flagged is worth a word on the row; routine ones not.
        unusual = outcome.kind == Kind.SUCCEEDED and summary != "completed"
        return WebhookOutcome.APPLIED, summary if unusual else ""

    def why_not_reprocess(self) -> str:
        """Why staff may not re-process this delivery ("" when they may), in their language."""
        if self.verdict != WebhookVerdict.VALID:
            return gettext("only deliveries with a valid signature can be processed")
        if self.outcome not in REPROCESSABLE_OUTCOMES:
            return gettext("a delivery that is “%(outcome)s” is not re-processed") % {
                "outcome": self.get_outcome_display()
            }
        return ""

    def reprocess(self, *, actor: Any = None) -> str:
        """Staff: process again (failed, unmatched, deferred, stranded); ``ValueError`` if not."""
        if reason := self.why_not_reprocess():
            raise ValueError(reason)
        if not self._claim(self.outcome):
            raise ValueError(gettext("the delivery is being processed by someone else"))
        return self.process(source=EventSource.STAFF, actor=actor)

    def _claim(self, expected: str) -> bool:
        rows = Delivery.objects.filter(pk=self.pk, outcome=expected)
        return bool(rows.update(outcome=WebhookOutcome.RECEIVED))


def sweep(now: datetime | None = None) -> int:
    """Every minute: process what a crash left ``received`` and deliveries now matched."""
    now = now or timezone.now()
    processed = 0
    valid = Delivery.objects.filter(verdict=WebhookVerdict.VALID).order_by("received_at", "pk")
    known = Training.objects.filter(fal_request_id=OuterRef("request_id"))
    late = valid.filter(Exists(known), outcome=WebhookOutcome.UNMATCHED)[:SWEEP_BATCH]
    stranded = valid.filter(outcome=WebhookOutcome.RECEIVED, received_at__lt=now - STRANDED_AFTER)
    for deliveries, level, text in (
        (
            stranded[:SWEEP_BATCH],
            logging.WARNING,
            "fal webhook delivery %s (request %s) was left unprocessed by a crash: now %s",
        ),
        (
            (delivery for delivery in late if delivery._claim(WebhookOutcome.UNMATCHED)),
            logging.INFO,
            "fal webhook delivery %s for request %s applied late: %s",
        ),
    ):
        for delivery in deliveries:
            processed += 1
            logger.log(level, text, delivery.pk, delivery.request_id, delivery.process())
    return processed


def _training_and_replay(request_id: str, signed: str) -> tuple[Training | None, bool]:
    """The training a delivery is for, and whether it replays one we acted on (one query)."""
    accepted = Delivery.objects.filter(
        signature=signed, verdict=WebhookVerdict.VALID, outcome__in=ACCEPTED_OUTCOMES
    )
    training = (
        Training.objects.select_related("avatar__owner")
        .only(*_LOOKUP_FIELDS)
        .annotate(replays=Exists(accepted))
        .filter(fal_request_id=request_id)
        .first()
    )
    return training, training.replays if training is not None else accepted.exists()


def _failure(exc: BaseException) -> tuple[str, str]:
    """What a row keeps of a processing error (staff see it in the admin)."""
    return clean(f"{type(exc).__name__}: {exc}", 2000), clean(traceback.format_exc(), 20000)
