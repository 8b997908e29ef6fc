"""The outbox: one row per message, unique on ``dedup_key``, written in the winning
transition's transaction, claimed with a lease, every attempt recorded.

Owner messages and staff alerts (``Notification``) and the bot's event callbacks
(``monitoring.api.models.EventCallback``) share the abstract ``OutboxRow``.
See docs/architecture.md#exactly-one-message-per-outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_q.brokers import get_broker

logger = logging.getLogger("notifications")


# The states every outbox row shares; each outbox adds its final ones.
class OutboxStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENDING = "sending", _("Sending")
    GIVEN_UP = "given_up", _("Given up")


# An attempt is in flight from before the request leaves; the next claimer makes one
# still in flight "interrupted" (the other side may have got it).
IN_FLIGHT = "in_flight"
INTERRUPTED = "interrupted"
# How long a worker may hold a task it took from the broker before it claims the row:
# a marked row older than this that the broker no longer holds has lost its task.
TASK_TAKEN_GRACE = timedelta(seconds=2)
INTERRUPTED_ERROR = (
    "The worker stopped before recording the answer; the message may or may not have arrived."
)
INTERRUPTED_TWICE = "Interrupted twice in the middle of a send: not sent a third time"


def backoff(failures: int, base: float, ceiling: float) -> float:
    """Seconds before the next try after ``failures`` failed ones: doubling, capped."""
    return min(ceiling, base * (2 ** max(0, failures - 1)))


class OutboxQuerySet(models.QuerySet):
    def due(self, now=None):
        """Rows a worker may claim now: pending and due, or held by a worker whose lease ran out."""
        now = now or timezone.now()
        free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
        return self.filter(next_attempt_at__lte=now).filter(
            Q(status=OutboxStatus.PENDING) & free
            | Q(status=OutboxStatus.SENDING, lease_until__lt=now)
        )

    def claim(self, pk: int, *, worker: str, lease_seconds: float):
        """Take the row for ``worker`` with a lease; None if not due. An attempt a dead worker
        left in flight makes it "may be a duplicate" (sent once more), a second one GIVEN_UP."""
        now = timezone.now()
        won = (
            self.due(now)
            .filter(pk=pk)
            .update(
                status=OutboxStatus.SENDING,
                lease_until=now + timedelta(seconds=lease_seconds),
                claimed_by=worker,
                queued_at=None,
            )
        )
        if not won:
            return None
        row: Any = self.get(pk=pk)
        row.interrupted = bool(
            row.attempt_log.filter(outcome=IN_FLIGHT, finished_at__isnull=True).update(
                outcome=INTERRUPTED, finished_at=now, error=INTERRUPTED_ERROR
            )
        )
        if row.interrupted and row.maybe_duplicate:
            if row.close(OutboxStatus.GIVEN_UP, last_error=INTERRUPTED_TWICE):
                row.status = OutboxStatus.GIVEN_UP
        elif row.interrupted:
            row.maybe_duplicate = True
            row.holding().update(maybe_duplicate=True)
        return row

    def queue_due(self, limit: int, now, enqueue: Callable[[int], None]) -> int:
        """Mark up to ``limit`` due rows without a task as queued, and queue them: the newest
        (a new message is not stuck behind a backlog) and the oldest (a backlog moves too)."""
        if limit <= 0:
            return 0
        due = self.due(now).filter(queued_at__isnull=True)
        half = (limit + 1) // 2
        ids = list(due.order_by("-next_attempt_at", "-pk").values_list("pk", flat=True)[:half])
        if len(ids) == half:
            ids += (
                due.exclude(pk__in=ids)
                .order_by("next_attempt_at", "pk")
                .values_list("pk", flat=True)[: limit - half]
            )
        # Marked with this pass's own timestamp: a row another relay (or a staff resend)
        # gave a task meanwhile is not matched, and is not queued twice.
        self.filter(pk__in=ids, queued_at__isnull=True).update(queued_at=now)
        mine = list(
            self.filter(pk__in=ids, queued_at=now)
            .order_by("-next_attempt_at", "-pk")
            .values_list("pk", flat=True)
        )
        for pk in mine:
            enqueue(pk)
        return len(mine)

    def forget_lost_tasks(self, now, queue: str) -> int:
        """Unmark the rows whose task the broker lost (a Redis restart, a killed worker): its
        queue is FIFO and shallow, so the oldest marked rows beyond its size have none."""
        marked = self.filter(queued_at__isnull=False)
        waiting = marked.count()
        if not waiting:
            return 0
        try:
            held = get_broker(queue).queue_size() or 0
        except Exception:  # the broker is down: nothing can be queued now anyway
            logger.warning("Queue %s cannot be read; lost tasks are looked for later", queue)
            return 0
        if waiting <= held:
            return 0
        old = marked.filter(queued_at__lt=now - TASK_TAKEN_GRACE)
        oldest = list(
            old.order_by("queued_at", "pk").values_list("pk", flat=True)[: waiting - held]
        )
        count = old.filter(pk__in=oldest).update(queued_at=None)
        if count:
            logger.warning("The broker lost %s task(s) of %s: queued again", count, queue)
        return count


class OutboxRow(models.Model):
    """A subclass gives ``status`` its final choices and an attempt model keyed ``attempt_log``.

    ``db_default`` on later fields keeps a previous release's worker writing during a rollout.
    """

    status = models.CharField(
        _("status"), max_length=16, choices=OutboxStatus.choices, default=OutboxStatus.PENDING
    )
    attempts = models.PositiveIntegerField(_("failed attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), default=timezone.now)
    lease_until = models.DateTimeField(_("lease until"), null=True, blank=True)
    claimed_by = models.CharField(_("claimed by"), max_length=128, blank=True, db_default="")
    queued_at = models.DateTimeField(_("task queued"), null=True, blank=True)
    # Sent once more after a worker died mid-send: the recipient may have got it twice.
    maybe_duplicate = models.BooleanField(_("may be a duplicate"), default=False, db_default=False)
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    last_error = models.TextField(_("last error"), blank=True)

    objects = OutboxQuerySet.as_manager()
    interrupted = False  # set by ``claim``
    attempt_log: Any

    class Meta:
        abstract = True

    def holding(self):
        return type(self).objects.filter(
            pk=self.pk, status=OutboxStatus.SENDING, claimed_by=self.claimed_by
        )

    def open_attempt(self, **fields: Any):
        """Record a try before the request leaves (a worker that dies now leaves a trace)."""
        return self.attempt_log.create(outcome=IN_FLIGHT, worker=self.claimed_by, **fields)

    def release(self, *, after: float, error: str = "", failed: bool = False) -> bool:
        """Back to pending, due in ``after`` seconds; a failed try counts toward giving up."""
        fields: dict[str, Any] = {
            "status": OutboxStatus.PENDING,
            "lease_until": None,
            "claimed_by": "",
            "next_attempt_at": timezone.now() + timedelta(seconds=after),
            "last_error": error[:2000],
        }
        if failed:
            fields["attempts"] = self.attempts
        return bool(self.holding().update(**fields))

    def close(self, status: str, **fields: Any) -> bool:
        """Settle the row for good; False if another worker took it over meanwhile."""
        return bool(self.holding().update(status=status, lease_until=None, **fields))

    def settle(
        self,
        attempt: Any,
        outcome: str,
        *,
        error: str = "",
        attempt_fields: dict[str, Any] | None = None,
        close: str | None = None,
        retry_in: float | None = None,
        failed: bool = False,
        **row_fields: Any,
    ) -> bool:
        """Record the attempt's answer and close the row or put it back, in one commit (a
        worker killed in between leaves the attempt in flight: the other side may have it)."""
        with transaction.atomic(using=self._state.db):
            type(attempt).objects.filter(pk=attempt.pk).update(
                outcome=outcome,
                finished_at=timezone.now(),
                error=error[:2000],
                **(attempt_fields or {}),
            )
            if close is not None:
                return self.close(close, **row_fields)
            if retry_in is not None:
                return self.release(after=retry_in, error=error, failed=failed)
        return True


class OutboxAttempt(models.Model):
    started_at = models.DateTimeField(_("started"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    worker = models.CharField(_("worker"), max_length=128, blank=True, db_default="")

    class Meta:
        abstract = True


class NotificationKind(models.TextChoices):
    READY = "ready", _("Avatar ready")
    FAILED = "failed", _("Training failed")
    CANCELLED = "cancelled", _("Training cancelled")
    DELAYED = "delayed", _("Training takes longer than usual")
    STUCK = "stuck", _("Training stuck (staff)")
    STUCK_DIGEST = "stuck_digest", _("Stuck trainings digest (staff)")
    FAL_ACCOUNT = "fal_account", _("fal authentication or billing trouble (staff)")
    FAL_OUTAGE = "fal_outage", _("fal failing for everyone (staff)")
    GIVEN_UP = "given_up", _("Notification given up (staff)")
    FAL_RECORD = "fal_record", _("fal's record needs staff (staff)")
    UNSAFE_RESULT = "unsafe_result", _("fal result URL refused (staff)")
    FILES = "files", _("Avatar files not kept (staff)")
    RETRIES = "retries", _("Many automatic retries (staff)")


# What an owner is told about a failed training (``monitoring.owner_messages``, or staff).
class OwnerMessage(models.TextChoices):
    PHOTOS = "photos", _("Photos unusable: upload other photos")
    TECHNICAL = "technical", _("Technical problem: try again later")
    # fal's own failure (never billed), after the automatic retries.
    FAL_FAILURE = "fal_failure", _("fal failed on its side: not charged, try again later")
    CANCELLED = "cancelled", _("We cancelled it")
    UNKNOWN = "unknown", _("An error happened (no specific reason)")
    NONE = "none", _("No message")


class Audience(models.TextChoices):
    OWNER = "owner", _("Owner")
    STAFF = "staff", _("Staff")


class NotificationStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENDING = "sending", _("Sending")
    SENT = "sent", _("Sent")
    UNREACHABLE = "unreachable", _("Recipient unreachable")
    FAILED = "failed", _("Failed (rejected by Telegram)")
    GIVEN_UP = "given_up", _("Given up after retries")
    MERGED = "merged", _("Merged into a digest")
    SKIPPED = "skipped", _("Skipped (no recipient)")


class Notification(OutboxRow):
    dedup_key = models.CharField(_("deduplication key"), max_length=200, unique=True)
    kind = models.CharField(_("kind"), max_length=32, choices=NotificationKind.choices)
    audience = models.CharField(_("audience"), max_length=8, choices=Audience.choices)
    owner = models.ForeignKey(
        "monitoring.Owner",
        models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("owner"),
    )
    avatar = models.ForeignKey(
        "monitoring.Avatar",
        models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("avatar"),
    )
    training = models.ForeignKey(
        "monitoring.Training",
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("training"),
    )
    # Staff messages: empty, resolved at send time (the setting, or the chat it migrated to).
    chat_id = models.BigIntegerField(_("chat id"), null=True, blank=True)
    text = models.TextField(_("text (HTML)"))
    context = models.JSONField(_("context"), default=dict, blank=True)

    status = models.CharField(
        _("status"),
        max_length=16,
        choices=NotificationStatus.choices,
        default=NotificationStatus.PENDING,
    )
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)
    telegram_message_id = models.BigIntegerField(_("Telegram message id"), null=True, blank=True)

    class Meta:
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=[NotificationStatus.PENDING, NotificationStatus.SENDING]),
                name="notification_due_idx",
            ),
            models.Index(
                fields=["queued_at"],
                condition=Q(queued_at__isnull=False),
                name="notification_queued_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.dedup_key


class NotificationAttempt(OutboxAttempt):
    class Outcome(models.TextChoices):
        IN_FLIGHT = IN_FLIGHT, _("In flight (no answer recorded)")
        INTERRUPTED = INTERRUPTED, _("Interrupted (may have arrived)")
        SENT = "sent", _("Sent")
        RETRY_AFTER = "retry_after", _("Flood control (retry later)")
        UNREACHABLE = "unreachable", _("Recipient unreachable")
        BAD_REQUEST = "bad_request", _("Rejected as bad request")
        INVALID_TOKEN = "invalid_token", _("Bot token rejected")
        MIGRATED = "migrated", _("Chat migrated")
        TRANSIENT = "transient", _("Transient error")
        ERROR = "error", _("Unexpected error")

    notification = models.ForeignKey(
        Notification, on_delete=models.CASCADE, related_name="attempt_log"
    )
    chat_id = models.BigIntegerField(_("chat id"), null=True, blank=True)
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices)
    telegram_message_id = models.BigIntegerField(_("Telegram message id"), null=True, blank=True)

    class Meta:
        verbose_name = _("notification attempt")
        verbose_name_plural = _("notification attempts")
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.notification_id} {self.outcome}"


class UnreachableChat(models.Model):
    """A chat the bot cannot message (blocked, deactivated, never pressed Start, kicked)."""

    chat_id = models.BigIntegerField(_("chat id"), unique=True)
    reason = models.CharField(_("why unreachable"), max_length=255, blank=True)
    since = models.DateTimeField(_("unreachable since"), default=timezone.now)

    class Meta:
        verbose_name = _("unreachable chat")
        verbose_name_plural = _("unreachable chats")

    def __str__(self) -> str:
        return f"{self.chat_id}: {self.reason}"


class ChatMigration(models.Model):
    """A group that became a supergroup: messages for the old id go to the new one."""

    old_chat_id = models.BigIntegerField(_("old chat id"), unique=True)
    new_chat_id = models.BigIntegerField(_("new chat id"))
    migrated_at = models.DateTimeField(_("migrated"), default=timezone.now)

    class Meta:
        verbose_name = _("chat migration")
        verbose_name_plural = _("chat migrations")

    def __str__(self) -> str:
        return f"{self.old_chat_id} → {self.new_chat_id}"


class PauseCause(models.TextChoices):
    TOKEN = "token", _("Bot token rejected")
    OUTAGE = "outage", _("Bot API outage")


class SenderState(models.Model):
    """Singleton (pk=1): whether sending is paused (token rejected, or the Bot API is down)."""

    paused = models.BooleanField(_("paused"), default=False)
    cause = models.CharField(_("cause"), max_length=8, choices=PauseCause.choices, blank=True)
    # Transient failures in a row across every send: enough mean the Bot API is down.
    failure_streak = models.PositiveIntegerField(_("failures in a row"), default=0)
    # The relay lease (notifications.delivery): one relay at a time queues due rows.
    relay_owner = models.CharField(_("relay"), max_length=128, blank=True)
    relay_until = models.DateTimeField(_("relay lease until"), null=True, blank=True)
    reason = models.TextField(_("reason"), blank=True)
    paused_at = models.DateTimeField(_("paused at"), null=True, blank=True)
    last_probe_at = models.DateTimeField(_("last probe"), null=True, blank=True)

    class Meta:
        verbose_name = _("sender state")
        verbose_name_plural = _("sender state")

    def __str__(self) -> str:
        return "paused" if self.paused else "sending"

    @classmethod
    def get(cls) -> SenderState:
        return cls.objects.get_or_create(pk=1)[0]


class RateLimitMark(models.Model):
    """One send slot taken for a chat, before the call: the limits hold across processes."""

    chat_id = models.BigIntegerField(_("chat id"))
    sent_at = models.DateTimeField(_("sent at"), default=timezone.now)

    class Meta:
        verbose_name = _("rate limit mark")
        verbose_name_plural = _("rate limit marks")
        indexes = [
            models.Index(fields=["sent_at"], name="ratelimit_time_idx"),
            models.Index(fields=["chat_id", "sent_at"], name="ratelimit_chat_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.chat_id} @ {self.sent_at:%H:%M:%S.%f}"


class ProgressState(models.TextChoices):
    NEW = "new", _("Not sent yet")
    SENDING = "sending", _("First send in flight")
    LIVE = "live", _("Live (edited in place)")
    DROPPED = "dropped", _("Dropped (the first send's outcome is unknown)")
    STOPPED = "stopped", _("Stopped (deleted, too old, or the bot is blocked)")
    DONE = "done", _("Done (last line written)")
    SKIPPED = "skipped", _("Not sent (the outcome came first)")


class ProgressMessage(models.Model):
    """One silent message per training, edited in place (``notifications.progress``). Not an
    outbox row: it holds what it should say (``text``) and what Telegram last accepted
    (``sent_text``), so an edit of unknown outcome is superseded by the next."""

    training = models.OneToOneField(
        "monitoring.Training",
        on_delete=models.CASCADE,
        related_name="progress_message",
        verbose_name=_("training"),
    )
    chat_id = models.BigIntegerField(_("chat id"))
    state = models.CharField(
        _("state"), max_length=8, choices=ProgressState.choices, default=ProgressState.NEW
    )
    message_id = models.BigIntegerField(_("Telegram message id"), null=True, blank=True)
    text = models.TextField(_("text now (HTML)"))
    phase = models.CharField(_("phase now"), max_length=16, blank=True)
    eta_at = models.DateTimeField(_("ETA now"), null=True, blank=True)
    sent_text = models.TextField(_("text Telegram has"), blank=True)
    sent_phase = models.CharField(_("phase Telegram has"), max_length=16, blank=True)
    sent_eta_at = models.DateTimeField(_("ETA Telegram has"), null=True, blank=True)
    # The outcome is known: only the last line may still be written.
    final = models.BooleanField(_("outcome known"), default=False)
    pending = models.BooleanField(_("to be sent"), default=True)
    next_at = models.DateTimeField(_("not before"), default=timezone.now)
    lease_until = models.DateTimeField(_("lease until"), null=True, blank=True)
    last_edit_at = models.DateTimeField(_("last sent or edited"), null=True, blank=True)
    edits = models.PositiveIntegerField(_("edits"), default=0)
    context = models.JSONField(_("context"), default=dict, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("progress message")
        verbose_name_plural = _("progress messages")
        indexes = [
            models.Index(fields=["next_at"], condition=Q(pending=True), name="progress_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.training_id} → {self.chat_id} ({self.state})"
