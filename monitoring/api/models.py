"""API clients, their calls and idempotency keys, and the event callbacks sent to them.
A token is stored only as its SHA-256 (256 bits of entropy: no slow hash needed)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from notifications.models import IN_FLIGHT, INTERRUPTED, OutboxAttempt, OutboxRow, OutboxStatus


class Scope(models.TextChoices):
    TRAININGS_WRITE = "trainings:write", _("Start, retrain, adopt and cancel trainings")
    AVATARS_READ = "avatars:read", _("Read avatars")
    # Granted by staff only: without it a client sees and acts on its own avatars alone.
    AVATARS_ALL = "avatars:all", _("Every avatar, not only this client's own (staff grant)")


class ApiClient(models.Model):
    name = models.CharField(_("name"), max_length=100, unique=True)
    scopes = models.JSONField(_("scopes"), default=list, blank=True)
    token_hash = models.CharField(_("token hash"), max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(
        _("token starts with"),
        max_length=16,
        editable=False,
        help_text=_("To tell tokens apart; the token itself is never stored."),
    )
    callback_url = models.URLField(
        _("callback URL"),
        max_length=1024,
        blank=True,
        help_text=_("https and public; outcomes of this client's avatars are POSTed here."),
    )
    callback_secret = models.CharField(
        _("callback secret"), max_length=128, blank=True, editable=False
    )
    callback_stuck = models.BooleanField(
        _("send avatar.stuck"),
        default=False,
        help_text=_("Also send an event when one of its trainings is flagged stuck."),
    )
    daily_budget_usd = models.DecimalField(
        _("daily budget (USD)"),
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text=_(
            "Starts are refused (402) once today's spend plus the estimate of its running "
            "trainings reaches it (UTC day). Empty: no budget."
        ),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("API client")
        verbose_name_plural = _("API clients")
        ordering = ["name"]
        permissions = [("manage_api_clients", _("Can create, change and revoke API clients"))]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])

    def avatar_filter(self) -> Q:
        """The avatars this client reads, lists, cancels and retrains: those it created,
        started or adopted (``ClientAvatar``; staff's belong to no client), or every one
        with ``avatars:all``."""
        return Q() if self.has_scope(Scope.AVATARS_ALL) else Q(api_link__client=self)


class ClientAvatar(models.Model):
    """Which client created (or adopted, or started) an avatar: it gets its events."""

    avatar = models.OneToOneField(
        "monitoring.Avatar", on_delete=models.CASCADE, related_name="api_link"
    )
    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="avatars")
    created_at = models.DateTimeField(default=timezone.now)
    # The client's own id for the avatar (an order number, a chat message): returned as
    # sent, in answers and events, and a filter of the list. Never interpreted here.
    client_reference = models.CharField(
        _("client reference"), max_length=255, blank=True, db_index=True
    )

    class Meta:
        verbose_name = _("avatar of an API client")
        verbose_name_plural = _("avatars of API clients")

    def __str__(self) -> str:
        return f"{self.client_id}:{self.avatar_id}"


class IdempotencyKey(models.Model):
    """A POST that starts a training, by (client, Idempotency-Key): committed as in
    progress before fal is called (``idempotency``); once done it holds the answer."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress", _("In progress")
        DONE = "done", _("Done")

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(_("key"), max_length=255)
    request_hash = models.CharField(_("request hash"), max_length=64)
    state = models.CharField(_("state"), max_length=16, choices=State.choices)
    avatar = models.ForeignKey(
        "monitoring.Avatar", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status_code = models.PositiveSmallIntegerField(_("status code"), null=True, blank=True)
    response = models.JSONField(_("answer"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = [
            models.UniqueConstraint(fields=["client", "key"], name="api_idempotency_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.client_id}:{self.key}"


class ApiCall(models.Model):
    """One authenticated call: who, what, the answer's status and how long it took."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="calls")
    at = models.DateTimeField(_("when"), default=timezone.now, db_index=True)
    method = models.CharField(_("method"), max_length=8)
    path = models.CharField(_("path"), max_length=512)
    status = models.PositiveSmallIntegerField(_("status"))
    duration_ms = models.FloatField(_("duration (ms)"))

    class Meta:
        verbose_name = _("API call")
        verbose_name_plural = _("API calls")
        ordering = ["-at", "-id"]
        # A client's calls of the last minute are its rate limit (``tokens.ClientToken``).
        indexes = [models.Index(fields=["client", "at"], name="api_call_client_at_idx")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.status}"


class EventType(models.TextChoices):
    COMPLETED = "avatar.completed", "avatar.completed"
    FAILED = "avatar.failed", "avatar.failed"
    CANCELLED = "avatar.cancelled", "avatar.cancelled"
    STUCK = "avatar.stuck", "avatar.stuck"
    # About an attempt, not the avatar: fal's own failure, retried automatically.
    RETRIED = "training.retried", "training.retried"


class CallbackStatus(models.TextChoices):
    PENDING = OutboxStatus.PENDING, _("Pending")
    SENDING = OutboxStatus.SENDING, _("Sending")
    DELIVERED = "delivered", _("Delivered")
    FAILED = "failed", _("Failed (final answer from the receiver)")
    REFUSED = "refused", _("Refused (URL not allowed)")
    GIVEN_UP = OutboxStatus.GIVEN_UP, _("Given up (too old, or interrupted twice)")


class EventCallback(OutboxRow):
    """An event for a client's callback URL: a row of the outbox, sent by its own policy.
    ``webhook_id`` is the same on every attempt: a receiver tells a retry from a new event."""

    event_key = models.CharField(_("event key"), max_length=200, unique=True)
    webhook_id = models.CharField(_("webhook-id"), max_length=64, unique=True)
    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="callbacks")
    avatar = models.ForeignKey(
        "monitoring.Avatar", on_delete=models.CASCADE, related_name="api_callbacks"
    )
    training = models.ForeignKey(
        "monitoring.Training",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="api_callbacks",
    )
    event_type = models.CharField(_("type"), max_length=32, choices=EventType.choices)
    payload = models.JSONField(_("body"))
    status = models.CharField(
        _("status"), max_length=16, choices=CallbackStatus.choices, default=CallbackStatus.PENDING
    )
    give_up_at = models.DateTimeField(_("retried until"))
    delivered_at = models.DateTimeField(_("delivered"), null=True, blank=True)

    class Meta:
        verbose_name = _("event callback")
        verbose_name_plural = _("event callbacks")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status=CallbackStatus.PENDING),
                name="api_callback_due_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.webhook_id}"


class CallbackAttempt(OutboxAttempt):
    """One POST of an event (or the reason it was not sent)."""

    class Outcome(models.TextChoices):
        IN_FLIGHT = IN_FLIGHT, _("In flight (no answer recorded)")
        INTERRUPTED = INTERRUPTED, _("Interrupted (may have arrived)")
        DELIVERED = "delivered", _("Delivered (2xx)")
        RETRY = "retry", _("Will retry (timeout, 5xx or 429)")
        REJECTED = "rejected", _("Rejected (final 4xx or redirect)")
        REFUSED = "refused", _("Not sent (address not allowed)")

    callback = models.ForeignKey(
        EventCallback, on_delete=models.CASCADE, related_name="attempt_log"
    )
    duration_ms = models.FloatField(_("duration (ms)"), null=True, blank=True)
    url = models.CharField(_("URL"), max_length=1024)
    address = models.CharField(_("address"), max_length=64, blank=True)
    status_code = models.PositiveSmallIntegerField(_("answer status"), null=True, blank=True)
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices)

    class Meta:
        verbose_name = _("callback attempt")
        verbose_name_plural = _("callback attempts")
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.callback_id} {self.outcome}"


def prunable(now: datetime) -> dict[str, QuerySet[Any]]:
    """What the API keeps, and for how long (registered with ``monitoring.ops.retention``)."""
    calls_before = now - timedelta(days=settings.RETENTION_API_CALL_DAYS)
    return {
        "api_calls": ApiCall.objects.filter(at__lt=calls_before),
        "api_idempotency_keys": IdempotencyKey.objects.filter(
            created_at__lt=now - timedelta(hours=settings.API_IDEMPOTENCY_KEY_HOURS)
        ),
        # A callback still being retried is kept whatever its age.
        "api_event_callbacks": EventCallback.objects.filter(created_at__lt=calls_before).exclude(
            status=CallbackStatus.PENDING
        ),
    }
