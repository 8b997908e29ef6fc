"""Owners, avatars, their training attempts, and everything the monitor records.

State lives here, never in memory. Only ``monitoring.transitions`` writes
``Avatar.status``. See docs/architecture.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import takewhile

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from notifications.models import OwnerMessage


class Language(models.TextChoices):
    RU = "ru", _("Russian")
    EN = "en", _("English")


class Owner(models.Model):
    # A Telegram user id is also the user's private chat id.
    telegram_id = models.BigIntegerField(_("Telegram id"), unique=True)
    username = models.CharField(_("username"), max_length=64, blank=True)
    display_name = models.CharField(_("display name"), max_length=256, blank=True)
    language = models.CharField(
        _("language"), max_length=2, choices=Language.choices, default=Language.RU
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("owner")
        verbose_name_plural = _("owners")

    def __str__(self) -> str:
        if self.username:
            return f"@{self.username} ({self.telegram_id})"
        return self.display_name or str(self.telegram_id)


class TrainingType(models.TextChoices):
    PORTRAIT = "portrait", _("Portrait")
    STYLE = "style", _("Style")


class AvatarStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    READY_FOR_TRAINING = "ready_for_training", _("Ready for training")
    TRAINING = "training", _("Training")
    COMPLETED = "completed", _("Completed")
    ERROR = "error", _("Error")
    CANCELLED = "cancelled", _("Cancelled")


class FalStatus(models.TextChoices):
    """The sub-state of an avatar in ``training``: ours before fal answers, then fal's."""

    SUBMITTING = "SUBMITTING", _("Submitting")
    NOT_SENT = "NOT_SENT", _("Waiting to be sent")  # an automatic retry's attempt
    # Held, not sent (docs/billing.md): sent when the balance is back.
    HELD = "HELD", _("Waiting for fal balance")
    IN_QUEUE = "IN_QUEUE", _("In queue")
    IN_PROGRESS = "IN_PROGRESS", _("In progress")
    COMPLETED = "COMPLETED", _("Completed on fal")


class Avatar(models.Model):
    owner = models.ForeignKey(
        Owner, on_delete=models.PROTECT, related_name="avatars", verbose_name=_("owner")
    )
    name = models.CharField(_("name"), max_length=128)
    training_type = models.CharField(
        _("training type"),
        max_length=16,
        choices=TrainingType.choices,
        default=TrainingType.PORTRAIT,
    )
    trigger_word = models.CharField(
        _("trigger word"),
        max_length=128,
        help_text=_(
            "Sent as trigger_phrase to the portrait trainer, trigger_word to the style one."
        ),
    )
    images_url = models.URLField(_("images archive URL"), max_length=2048)
    training_settings = models.JSONField(
        _("training settings"),
        default=dict,
        blank=True,
        help_text=_("Extra trainer inputs, e.g. steps or learning_rate."),
    )
    status = models.CharField(
        _("status"),
        max_length=32,
        choices=AvatarStatus.choices,
        default=AvatarStatus.DRAFT,
        editable=False,
    )
    # Only this attempt may still change the avatar (not an older one, after a retrain).
    current_training = models.ForeignKey(
        "Training",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
        verbose_name=_("current training"),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("avatar")
        verbose_name_plural = _("avatars")
        # What staff may do beyond viewing (``monitoring.roles``).
        permissions = [
            ("start_training", _("Can start or retrain a training (costs money)")),
            ("cancel_training", _("Can cancel a training on fal")),
            ("fail_avatar", _("Can mark an avatar failed")),
            ("recheck_avatar", _("Can re-check a training on fal")),
            ("manage_stuck", _("Can clear or extend the stuck flag")),
            ("resend_notification", _("Can resend a notification")),
            ("adopt_training", _("Can adopt a fal request started elsewhere")),
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="avatar_status_idx")]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"


class TrainingOutcome(models.TextChoices):
    COMPLETED = "completed", _("Completed")
    ERROR = "error", _("Error")
    CANCELLED = "cancelled", _("Cancelled")
    REFUSED = "refused", _("Submit refused by fal")
    # A lost submit closed by an Operator's "fal has no such job".
    NO_FAL_JOB = "no_fal_job", _("No job on fal (recorded by staff)")
    # fal's own failure, followed at once by a new attempt with the same input.
    RETRIED = "retried", _("Retried automatically")


class CostState(models.TextChoices):
    PENDING = "pending", _("Looking up")
    BILLED = "billed", _("Billed")
    NOT_BILLED = "not_billed", _("No billing event")


class HoldReason(models.TextChoices):
    BALANCE_LOW = "balance_low", _("fal balance below the hold threshold")
    ACCOUNT_LOCKED = "account_locked", _("fal refused the submit: account locked")


class TrainingQuerySet(models.QuerySet["Training"]):
    def active(self) -> TrainingQuerySet:
        return self.filter(finished_at__isnull=True)

    def for_request(self, request_id: str) -> TrainingQuerySet:
        return self.filter(fal_request_id=request_id)

    def held(self) -> TrainingQuerySet:
        """Oldest first: the order they are sent in."""
        return self.active().filter(fal_status=FalStatus.HELD).order_by("held_since", "pk")

    def cost_due(self, now: datetime) -> TrainingQuerySet:
        # fal's billing lags: a finished attempt's billing event is first looked for after 60 s.
        first = now - timedelta(seconds=60)
        return self.filter(
            Q(cost_state="", finished_at__lte=first)
            | Q(cost_state=CostState.PENDING, cost_next_lookup_at__lte=now)
        )


class Training(models.Model):
    """One attempt at training an avatar on fal; active while ``finished_at`` is null."""

    avatar = models.ForeignKey(
        Avatar, on_delete=models.CASCADE, related_name="trainings", verbose_name=_("avatar")
    )
    attempt = models.PositiveIntegerField(_("attempt"), default=1)
    endpoint = models.CharField(_("fal endpoint"), max_length=128)
    arguments = models.JSONField(_("submitted input"), default=dict, blank=True)
    fal_request_id = models.CharField(
        _("fal request id"), max_length=128, null=True, blank=True, unique=True
    )
    # fal's last runner attempt (changes when fal retries); kept for support, never a key.
    gateway_request_id = models.CharField(_("fal gateway request id"), max_length=128, blank=True)
    status_url = models.URLField(_("status URL"), max_length=1024, blank=True)
    response_url = models.URLField(_("response URL"), max_length=1024, blank=True)
    cancel_url = models.URLField(_("cancel URL"), max_length=1024, blank=True)
    webhook_url = models.URLField(_("webhook URL"), max_length=1024, blank=True)
    # Empty once the attempt has ended, unless fal reported the job COMPLETED.
    fal_status = models.CharField(
        _("fal status"),
        max_length=16,
        choices=FalStatus.choices,
        default=FalStatus.SUBMITTING,
        blank=True,
    )
    queue_position = models.IntegerField(_("queue position"), null=True, blank=True)
    # The ETA (docs/eta.md), written by the checks so that no listing computes it.
    queue_position_first = models.IntegerField(_("first queue position"), null=True, blank=True)
    queue_drain_per_minute = models.FloatField(
        _("queue positions drained per minute"), null=True, blank=True
    )
    eta_at = models.DateTimeField(_("ready around"), null=True, blank=True)
    eta_low = models.DateTimeField(_("ready at the earliest"), null=True, blank=True)
    eta_high = models.DateTimeField(_("ready at the latest"), null=True, blank=True)
    eta_late = models.BooleanField(_("taking longer than usual"), default=False)
    logs_tail = models.TextField(_("last logs"), blank=True)

    created_at = models.DateTimeField(_("created"), default=timezone.now)
    submitted_at = models.DateTimeField(_("submitted"), null=True, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    outcome = models.CharField(
        _("outcome"), max_length=16, choices=TrainingOutcome.choices, blank=True
    )

    lora_url = models.URLField(_("LoRA file URL"), max_length=2048, blank=True)
    config_url = models.URLField(_("config file URL"), max_length=2048, blank=True)
    result = models.JSONField(_("raw result"), null=True, blank=True)
    error_type = models.CharField(_("error type"), max_length=128, blank=True)
    error_message = models.TextField(_("error message"), blank=True)
    # What the owner is told when this attempt did not complete (``owner_messages``).
    owner_message = models.CharField(
        _("owner told"), max_length=16, choices=OwnerMessage.choices, blank=True
    )
    staff_note = models.TextField(
        _("internal note"), blank=True, help_text=_("Staff only; never sent to the owner.")
    )

    next_check_at = models.DateTimeField(_("next check"), null=True, blank=True)
    last_checked_at = models.DateTimeField(_("last checked"), null=True, blank=True)
    last_check_ok_at = models.DateTimeField(_("last successful check"), null=True, blank=True)
    check_failures = models.PositiveIntegerField(_("consecutive check failures"), default=0)
    last_check_error = models.TextField(_("last check error"), blank=True)
    not_found_count = models.PositiveIntegerField(_("consecutive 'not found' answers"), default=0)
    not_found_since = models.DateTimeField(_("'not found' since"), null=True, blank=True)
    stuck_since = models.DateTimeField(_("stuck since"), null=True, blank=True)
    stuck_reason = models.CharField(_("stuck reason"), max_length=255, blank=True)
    stuck_episode = models.PositiveIntegerField(_("stuck episodes"), default=0)
    stuck_deadline_extended_until = models.DateTimeField(
        _("stuck checks paused until"), null=True, blank=True
    )
    cancel_requested_at = models.DateTimeField(_("cancel requested"), null=True, blank=True)
    # Deadlines (docs/fal.md); a run deadline's cancel is not a staff cancel: it is retried.
    start_deadline_seconds = models.PositiveIntegerField(
        _("start deadline sent (s)"), null=True, blank=True
    )
    deadline_cancel_at = models.DateTimeField(
        _("cancelled by the run deadline"), null=True, blank=True
    )

    # fal's own record (``monitoring.recovery``).
    submit_unknown_since = models.DateTimeField(
        _("submit outcome unknown since"), null=True, blank=True
    )
    lost_submit_given_up_at = models.DateTimeField(_("lost submit given up"), null=True, blank=True)
    result_unavailable_since = models.DateTimeField(
        _("finished on fal, result not available since"), null=True, blank=True
    )

    # Held start: the lost-submit and stuck limits count from the release.
    held_since = models.DateTimeField(_("held since"), null=True, blank=True)
    held_reason = models.CharField(
        _("held because"), max_length=16, choices=HoldReason.choices, blank=True
    )
    released_at = models.DateTimeField(_("released from hold"), null=True, blank=True)

    cost_state = models.CharField(
        _("cost"), max_length=16, choices=CostState.choices, blank=True, default=""
    )
    cost_nano_usd = models.BigIntegerField(_("cost (nano-USD)"), null=True, blank=True)
    cost_units = models.DecimalField(
        _("billed units"), max_digits=24, decimal_places=6, null=True, blank=True
    )
    cost_unit_price = models.DecimalField(
        _("unit price (USD)"), max_digits=24, decimal_places=9, null=True, blank=True
    )
    cost_lookups = models.PositiveIntegerField(_("billing lookups"), default=0)
    cost_next_lookup_at = models.DateTimeField(_("next billing lookup"), null=True, blank=True)

    objects = TrainingQuerySet.as_manager()

    class Meta:
        verbose_name = _("training")
        verbose_name_plural = _("trainings")
        constraints = [
            models.UniqueConstraint(fields=["avatar", "attempt"], name="training_attempt_unique"),
        ]
        indexes = [
            models.Index(
                fields=["next_check_at"],
                condition=Q(finished_at__isnull=True),
                name="training_due_idx",
            ),
            models.Index(
                fields=["stuck_since"],
                condition=Q(finished_at__isnull=True, stuck_since__isnull=False),
                name="training_stuck_idx",
            ),
            models.Index(fields=["-finished_at"], name="training_finished_idx"),
            models.Index(
                fields=["finished_at"],
                condition=Q(cost_state="", finished_at__isnull=False),
                name="training_cost_new_idx",
            ),
            models.Index(
                fields=["cost_next_lookup_at"],
                condition=Q(cost_state="pending"),
                name="training_cost_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.avatar_id}#{self.attempt} {self.fal_request_id or '(not submitted)'}"

    @property
    def is_active(self) -> bool:
        return self.finished_at is None

    @property
    def is_stuck(self) -> bool:
        return self.stuck_since is not None and self.finished_at is None

    @property
    def is_held(self) -> bool:
        return self.fal_status == FalStatus.HELD and self.finished_at is None

    def episode(self) -> list[Training]:
        """This attempt and the automatic retries right before it, newest first."""
        if self.attempt == 1:
            return [self]
        earlier = Training.objects.filter(avatar_id=self.avatar_id, attempt__lt=self.attempt)
        fields = ("attempt", "outcome", "created_at", "deadline_cancel_at")
        earlier = earlier.order_by("-attempt").only(*fields)
        return [self, *takewhile(lambda t: t.outcome == TrainingOutcome.RETRIED, earlier)]

    @property
    def sent_from(self) -> datetime:
        """When sending began: the release of a held start, else the attempt's creation."""
        return self.released_at or self.created_at


class EventSource(models.TextChoices):
    WEBHOOK = "webhook", _("fal webhook")
    CHECK = "check", _("periodic check")
    RESTORE = "restore", _("startup restore")
    STAFF = "staff", _("staff action")
    FAL_RECORD = "fal_record", _("fal's record (Platform API)")
    ADOPT = "adopt", _("adopted from fal")
    COMMAND = "command", _("management command")
    SYSTEM = "system", _("system")
    API = "api", _("bot API")


class EventKind(models.TextChoices):
    CREATED = "created", _("Created")
    STATUS = "status", _("Status changed")
    SUBMITTED = "submitted", _("Submitted to fal")
    SUBMIT_REFUSED = "submit_refused", _("Submit refused by fal")
    FAL_STATUS = "fal_status", _("fal status changed")
    STUCK = "stuck", _("Flagged stuck")
    UNSTUCK = "unstuck", _("Stuck flag cleared")
    CANCEL_REQUESTED = "cancel_requested", _("Cancel requested")
    RECHECK_REQUESTED = "recheck_requested", _("Re-check requested")
    NOTE = "note", _("Note")
    RETRIED = "retried", _("Retried automatically")


class AvatarEvent(models.Model):
    """The timeline of an avatar: changes only, never routine checks."""

    avatar = models.ForeignKey(
        Avatar, on_delete=models.CASCADE, related_name="events", verbose_name=_("avatar")
    )
    training = models.ForeignKey(
        Training,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="events",
        verbose_name=_("training"),
    )
    created_at = models.DateTimeField(_("when"), default=timezone.now, db_index=True)
    kind = models.CharField(_("what"), max_length=32, choices=EventKind.choices)
    source = models.CharField(_("source"), max_length=16, choices=EventSource.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("staff user"),
    )
    old_status = models.CharField(_("old status"), max_length=32, blank=True)
    new_status = models.CharField(_("new status"), max_length=32, blank=True)
    message = models.TextField(_("message"), blank=True)
    details = models.JSONField(_("details"), default=dict, blank=True)

    class Meta:
        verbose_name = _("avatar event")
        verbose_name_plural = _("avatar events")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["avatar", "-created_at"], name="event_avatar_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.source})"


class WebhookVerdict(models.TextChoices):
    VALID = "valid", _("Valid signature")
    MISSING_HEADERS = "missing_headers", _("Missing headers")
    STALE = "stale", _("Timestamp outside the window")
    BAD_SIGNATURE = "bad_signature", _("Bad signature")
    TOO_LARGE = "too_large", _("Body too large")
    UNVERIFIABLE = "unverifiable", _("No signing keys available")
    UNREADABLE = "unreadable", _("Body malformed or truncated")
    OTHER_ACCOUNT = "other_account", _("Signed for another fal account")


class WebhookOutcome(models.TextChoices):
    RECEIVED = "received", _("Received, not processed yet")
    APPLIED = "applied", _("Applied")
    ALREADY_DONE = "already_done", _("Already done (duplicate or late)")
    REPLAY = "replay", _("Exact replay")
    UNMATCHED = "unmatched", _("No matching training")
    REJECTED = "rejected", _("Rejected")
    DEFERRED = "deferred", _("Result to be fetched from the queue")
    FAILED = "failed", _("Processing failed")


# fal's signing time of a delivery (Unix seconds), as ``monitoring.fal.signature`` names it.
WEBHOOK_TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"


class WebhookDeliveryQuerySet(models.QuerySet):
    def first_signed_at(self, *, training_id: int | None) -> datetime | None:
        """When fal signed its first verified delivery for this training: fal's completion
        time as fal states it (retries carry later timestamps)."""
        if training_id is None:
            return None
        kept = self.filter(training_id=training_id, verdict=WebhookVerdict.VALID).values_list(
            "headers", flat=True
        )
        stamps = [(headers or {}).get(WEBHOOK_TIMESTAMP_HEADER) for headers in kept]
        seconds = [int(s) for s in stamps if isinstance(s, str) and s.isdigit()]
        return datetime.fromtimestamp(min(seconds), tz=UTC) if seconds else None


class WebhookDelivery(models.Model):
    """Every POST to /webhooks/fal/, stored with what it did (or why it failed) before we answer."""

    received_at = models.DateTimeField(_("received"), default=timezone.now, db_index=True)
    remote_addr = models.GenericIPAddressField(_("remote address"), null=True, blank=True)
    headers = models.JSONField(_("fal headers"), default=dict, blank=True)
    header_request_id = models.CharField(_("header request id"), max_length=128, blank=True)
    request_id = models.CharField(
        _("request id"),
        max_length=128,
        blank=True,
        db_index=True,
        help_text=_("The request_id from the body."),
    )
    signature = models.CharField(_("signature"), max_length=256, blank=True)
    verdict = models.CharField(_("verdict"), max_length=32, choices=WebhookVerdict.choices)
    outcome = models.CharField(
        _("outcome"), max_length=32, choices=WebhookOutcome.choices, default=WebhookOutcome.RECEIVED
    )
    fal_status = models.CharField(_("status in body"), max_length=16, blank=True)
    body = models.TextField(
        _("body"), blank=True, help_text=_("Whole for verified deliveries, an excerpt otherwise.")
    )
    body_size = models.PositiveIntegerField(_("body size"), default=0)
    body_sha256 = models.CharField(
        _("body SHA-256"),
        max_length=64,
        blank=True,
        help_text=_("Of the body as received, whole or not: tells apart bodies kept as excerpts."),
    )
    error = models.TextField(_("error"), blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    processed_at = models.DateTimeField(_("processed"), null=True, blank=True)
    training = models.ForeignKey(
        Training,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="webhook_deliveries",
        verbose_name=_("training"),
    )

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(
                fields=["request_id"],
                condition=Q(outcome=WebhookOutcome.UNMATCHED),
                name="webhook_unmatched_idx",
            ),
            models.Index(
                fields=["received_at"],
                condition=Q(outcome=WebhookOutcome.RECEIVED),
                name="webhook_received_idx",
            ),
            # A refused row's signature (anyone's to send) is never indexed.
            models.Index(
                fields=["signature"],
                condition=Q(verdict=WebhookVerdict.VALID),
                name="webhook_signature_valid_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id or self.header_request_id or '?'} {self.verdict}/{self.outcome}"

    @property
    def matched(self) -> bool:
        return self.training_id is not None


class RefusedWebhookCount(models.Model):
    """Refused deliveries per minute and verdict, rows kept or not: beyond
    ``WEBHOOK_REFUSED_ROWS_PER_MINUTE`` rows only this count grows."""

    minute = models.DateTimeField(_("minute"))
    verdict = models.CharField(_("verdict"), max_length=32, choices=WebhookVerdict.choices)
    count = models.PositiveIntegerField(_("refused"), default=0)
    kept_bytes = models.PositiveIntegerField(_("bytes kept as rows"), default=0)

    class Meta:
        verbose_name = _("refused webhooks per minute")
        verbose_name_plural = _("refused webhooks per minute")
        ordering = ["-minute", "verdict"]
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "verdict"], name="refused_webhook_count_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.verdict}: {self.count}"


class FalSigningKeys(models.Model):
    """fal's JWKS, cached in the database so every web worker shares one copy."""

    url = models.URLField(max_length=1024, unique=True)
    keys = models.JSONField(default=list, blank=True)
    fetched_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        verbose_name = _("fal signing keys")
        verbose_name_plural = _("fal signing keys")

    def __str__(self) -> str:
        return self.url


class CheckRun(models.Model):
    """A heartbeat per periodic run: the health endpoint and the dashboard read these."""

    class Kind(models.TextChoices):
        SCHEDULED = "scheduled", _("Scheduled")
        RESTORE = "restore", _("Startup restore")
        MANUAL = "manual", _("Manual")

    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices, default=Kind.SCHEDULED)
    started_at = models.DateTimeField(_("started"), default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    duration_seconds = models.FloatField(_("duration (s)"), null=True, blank=True)
    due = models.PositiveIntegerField(_("due"), default=0)
    checked = models.PositiveIntegerField(_("checked"), default=0)
    changed = models.PositiveIntegerField(_("changed"), default=0)
    completed = models.PositiveIntegerField(_("completed"), default=0)
    failed = models.PositiveIntegerField(_("failed"), default=0)
    errors = models.PositiveIntegerField(_("fal errors"), default=0)
    fal_outage_since = models.DateTimeField(_("fal outage since"), null=True, blank=True)
    notes = models.TextField(_("notes"), blank=True)

    class Meta:
        verbose_name = _("check run")
        verbose_name_plural = _("check runs")
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.started_at:%Y-%m-%d %H:%M:%S}"


class UnknownFalRequest(models.Model):
    """A request fal billed to our key that no training follows (found by ``reconcile_fal``)."""

    request_id = models.CharField(_("fal request id"), max_length=128, unique=True)
    endpoint_id = models.CharField(_("fal endpoint"), max_length=128)
    ended_at = models.DateTimeField(_("ended on fal"), null=True, blank=True)
    status_code = models.IntegerField(_("HTTP status on fal"), null=True, blank=True)
    first_seen_at = models.DateTimeField(_("first seen"), default=timezone.now)
    last_seen_at = models.DateTimeField(_("last seen"), default=timezone.now)
    adopted_training = models.ForeignKey(
        Training,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("adopted as"),
    )
    cost_nano_usd = models.BigIntegerField(_("cost (nano-USD)"), null=True, blank=True)

    class Meta:
        verbose_name = _("fal request unknown to us")
        verbose_name_plural = _("fal requests unknown to us")
        ordering = ["-ended_at", "-id"]

    def __str__(self) -> str:
        return f"{self.endpoint_id} {self.request_id}"


class RunningTotal(models.Model):
    """A Prometheus counter, one row per name and label set (``monitoring.totals``): it
    never decreases, so retention never touches this table."""

    name = models.CharField(_("name"), max_length=64)
    # JSON with sorted keys (``monitoring.totals.labels_text``), e.g. {"verdict": "valid", ...}.
    labels = models.CharField(_("labels"), max_length=255)
    value = models.BigIntegerField(_("value"), default=0)
    sum_ms = models.BigIntegerField(_("sum (ms)"), default=0)

    class Meta:
        verbose_name = _("running total")
        verbose_name_plural = _("running totals")
        constraints = [
            models.UniqueConstraint(fields=["name", "labels"], name="running_total_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name}{self.labels} = {self.value}"


class WorkerHeartbeat(models.Model):
    """One row per worker role and host, touched by the role's process every few seconds:
    what proves the notification side alive (it has no ``CheckRun``)."""

    role = models.CharField(_("role"), max_length=32)
    host = models.CharField(_("host"), max_length=255)
    pid = models.PositiveIntegerField(_("process id"))
    started_at = models.DateTimeField(_("started"), default=timezone.now)
    beat_at = models.DateTimeField(_("last beat"), default=timezone.now)

    class Meta:
        verbose_name = _("worker heartbeat")
        verbose_name_plural = _("worker heartbeats")
        constraints = [
            models.UniqueConstraint(fields=["role", "host"], name="one_heartbeat_per_role_and_host")
        ]

    def __str__(self) -> str:
        return f"{self.role} on {self.host}"


class FileKind(models.TextChoices):
    LORA = "lora", _("LoRA file")
    CONFIG = "config", _("config file")


class FileState(models.TextChoices):
    PENDING = "pending", _("Being copied")
    KEPT = "kept", _("Kept")
    FAILED = "failed", _("Not kept")


class KeptFile(models.Model):
    """Our copy of one file a completed training produced on fal (``monitoring.files``);
    ``name`` is set only once the verified bytes sit under it."""

    class Failure(models.TextChoices):
        TOO_LARGE = "too_large", _("Larger than AVATAR_FILE_MAX_BYTES")
        GONE = "gone", _("fal no longer has it")
        UNSAFE_URL = "unsafe_url", _("URL refused (not fal's, or not https)")
        GAVE_UP = "gave_up", _("Still failing after AVATAR_FILES_RETRY_HOURS")

    training = models.ForeignKey(
        Training, on_delete=models.CASCADE, related_name="kept_files", verbose_name=_("training")
    )
    kind = models.CharField(_("file"), max_length=8, choices=FileKind.choices)
    source_url = models.URLField(_("fal's URL"), max_length=2048)
    file_name = models.CharField(_("file name"), max_length=128)
    expected_size = models.BigIntegerField(_("size according to fal"), null=True, blank=True)
    state = models.CharField(
        _("state"), max_length=8, choices=FileState.choices, default=FileState.PENDING
    )
    failure = models.CharField(
        _("why not kept"), max_length=16, choices=Failure.choices, blank=True
    )
    name = models.CharField(_("name in storage"), max_length=512, blank=True)
    size = models.BigIntegerField(_("size"), null=True, blank=True)
    sha256 = models.CharField(_("SHA-256"), max_length=64, blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), default=timezone.now)
    retry_until = models.DateTimeField(_("retried until"))
    lease_until = models.DateTimeField(_("lease until"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    kept_at = models.DateTimeField(_("kept"), null=True, blank=True)

    class Meta:
        verbose_name = _("kept file")
        verbose_name_plural = _("kept files")
        constraints = [
            models.UniqueConstraint(fields=["training", "kind"], name="kept_file_unique")
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=Q(state="pending"), name="kept_file_due_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.training_id} {self.kind} ({self.state})"


class FalAccount(models.Model):
    """fal's account as last read by ``monitoring.billing`` (one row, pk 1)."""

    balance_usd = models.DecimalField(
        _("balance (USD)"), max_digits=18, decimal_places=6, null=True, blank=True
    )
    read_at = models.DateTimeField(_("balance read"), null=True, blank=True)
    last_attempt_at = models.DateTimeField(_("last attempt"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    billing_refused = models.BooleanField(_("billing not readable with this key"), default=False)
    locked_since = models.DateTimeField(_("account locked since"), null=True, blank=True)
    alert_since = models.DateTimeField(_("balance alert since"), null=True, blank=True)
    # {endpoint: {unit_price, unit, currency}}, kept an hour.
    prices = models.JSONField(_("unit prices"), default=dict, blank=True)
    prices_read_at = models.DateTimeField(_("prices read"), null=True, blank=True)

    class Meta:
        verbose_name = _("fal account")
        verbose_name_plural = _("fal account")

    def __str__(self) -> str:
        return f"fal balance {self.balance_usd} at {self.read_at}"

    @classmethod
    def current(cls) -> FalAccount:
        return cls.objects.get_or_create(pk=1)[0]
