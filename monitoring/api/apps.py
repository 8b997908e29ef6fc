from __future__ import annotations

from typing import Any

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
        from monitoring.api import callbacks, models
        from monitoring.ops import attention, metrics, retention
        from notifications import delivery

        # Old rows pruned with the rest; failing event callbacks on /metrics and, past a
        # threshold, in the banner.
        extensions: tuple[tuple[list[Any], Any], ...] = (
            (retention.EXTRA_PRUNABLE, models.prunable),
            (attention.EXTRA_PROBLEMS, callbacks.problems),
            (metrics.EXTRA_FIGURES, callbacks.figures),
        )
        for hooks, hook in extensions:
            if hook not in hooks:
                hooks.append(hook)
        # The outcome's event rows are written in the transition's own transaction.
        for signal, receiver in (
            (transitions.training_finished, callbacks.record_outcome),
            (transitions.training_flagged_stuck, callbacks.record_stuck),
            (transitions.training_retried, callbacks.record_retried),
        ):
            signal.connect(receiver, dispatch_uid=f"api.{receiver.__name__}")
        # The outbox's one relay queues due events too (retries, lost hand-overs).
        delivery.register_outbox(callbacks.relay_once)
