"""The notification outbox.

One row per message, unique on ``dedup_key``: whichever code path (webhook,
periodic check, staff action) wins a status transition writes the row in the same
transaction, and a second attempt to write it hits the unique constraint. The
sender claims rows with a conditional UPDATE and a lease, and records every
attempt.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


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


class OwnerMessage(models.TextChoices):
    """What an owner is told about a training that did not complete.

    Chosen by ``monitoring.owner_messages`` from fal's answer, or by staff ("mark as
    failed"); stored on the training and in the notification's context.
    """

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


class Notification(models.Model):
    dedup_key = models.CharField(_("deduplication key"), max_length=200, unique=True)
    kind = models.CharField(_("kind"), max_length=32, choices=NotificationKind.choices)
    audience = models.CharField(_("audience"), max_length=8, choices=Audience.choices)
    owner = models.ForeignKey(
        "monitoring.Owner",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("owner"),
    )
    avatar = models.ForeignKey(
        "monitoring.Avatar",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("avatar"),
    )
    training = models.ForeignKey(
        "monitoring.Training",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name=_("training"),
    )
    # Owner messages: the owner's Telegram id. Staff messages: empty, resolved at send
    # time (the setting, or the chat it migrated to).
    chat_id = models.BigIntegerField(_("chat id"), null=True, blank=True)
    text = models.TextField(_("text (HTML)"))
    context = models.JSONField(_("context"), default=dict, blank=True)

    status = models.CharField(
        _("status"),
        max_length=16,
        choices=NotificationStatus.choices,
        default=NotificationStatus.PENDING,
    )
    attempts = models.PositiveIntegerField(_("failed attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), default=timezone.now)
    lease_until = models.DateTimeField(_("lease until"), null=True, blank=True)
    claimed_by = models.CharField(_("claimed by"), max_length=128, blank=True)
    # When a delivery task was put on the queue for this row (None: no task waiting).
    # The relay and the sweep queue a task only for rows without one, and the task
    # clears it when it runs, so a row never has two tasks waiting.
    queued_at = models.DateTimeField(_("task queued"), null=True, blank=True)
    # A worker died (or was stopped) in the middle of sending this row: it was sent
    # again once, and the owner may have got it twice.
    maybe_duplicate = models.BooleanField(_("may be a duplicate"), default=False)
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)
    telegram_message_id = models.BigIntegerField(_("Telegram message id"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)

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


class NotificationAttempt(models.Model):
    """One try at sending: its outcome, error and Telegram's message id."""

    class Outcome(models.TextChoices):
        # Written before the request goes out: an attempt still in flight after its
        # lease means the worker died mid-send (the message may or may not have arrived).
        IN_FLIGHT = "in_flight", _("In flight (no answer recorded)")
        # An in-flight attempt whose worker died or was stopped before the answer.
        INTERRUPTED = "interrupted", _("Interrupted (may have arrived)")
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
    started_at = models.DateTimeField(_("started"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    chat_id = models.BigIntegerField(_("chat id"), null=True, blank=True)
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices)
    error = models.TextField(_("error"), blank=True)
    telegram_message_id = models.BigIntegerField(_("Telegram message id"), null=True, blank=True)
    worker = models.CharField(_("worker"), max_length=128, blank=True)

    class Meta:
        verbose_name = _("notification attempt")
        verbose_name_plural = _("notification attempts")
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.notification_id} {self.outcome}"


class UnreachableChat(models.Model):
    """A chat the bot cannot message (blocked, deactivated, never pressed Start, kicked).

    The state of the Telegram channel, kept where the sending is (healthchecks keeps
    ``disabled`` on its channel, not on the user): messages to it are not sent.
    """

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
    # Transient failures in a row across every send (reset by any success): this many
    # mean the Bot API is down for everyone, not for one message.
    failure_streak = models.PositiveIntegerField(_("failures in a row"), default=0)
    # The relay lease (notifications.relay): one relay at a time queues due rows.
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
        state, _created = cls.objects.get_or_create(pk=1)
        return state


class RateLimitMark(models.Model):
    """One send slot taken (or reserved) for a chat: the shared memory of the rate limiter.

    Every worker process reserves a slot here before it calls Telegram, so the limits
    hold across processes and restarts. Rows older than the longest window are pruned.
    """

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
