from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ApiConfig(AppConfig):
    """Its own app (label ``api``) so that its tables and migrations stay apart."""

    name = "monitoring.api"
    label = "api"
    verbose_name = _("Bot API")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from monitoring import transitions
        from monitoring.api import callback_health, callbacks, checks  # noqa: F401 (registers the checks)
        from monitoring.api import retention as api_retention
        from monitoring.ops import attention, metrics, retention
        from notifications import relay

        if api_retention.prunable not in retention.EXTRA_PRUNABLE:
            retention.EXTRA_PRUNABLE.append(api_retention.prunable)
        # Failing event callbacks: on /metrics and, past a threshold, in the banner.
        if callback_health.problems not in attention.EXTRA_PROBLEMS:
            attention.EXTRA_PROBLEMS.append(callback_health.problems)
        if callback_health.figures not in metrics.EXTRA_FIGURES:
            metrics.EXTRA_FIGURES.append(callback_health.figures)

        # The outcome's event rows are written in the transition's own transaction.
        transitions.training_finished.connect(
            callbacks.record_outcome, dispatch_uid="api-callback-outcome"
        )
        transitions.training_flagged_stuck.connect(
            callbacks.record_stuck, dispatch_uid="api-callback-stuck"
        )
        transitions.training_retried.connect(
            callbacks.record_retried, dispatch_uid="api-callback-retried"
        )
        # The outbox's one relay queues due events too (retries, lost hand-overs).
        relay.register(callbacks.relay_once)
