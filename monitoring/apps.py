from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = _("Avatar monitoring")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from monitoring import files, owner_progress, roles, totals, transitions
        from monitoring.fal import deliveries  # noqa: F401 (the Delivery proxy model)
        from monitoring.models import KeptFile
        from monitoring.ops import retention, schedules, system_checks  # noqa: F401 (registers the checks)
        from notifications import signals as notification_signals

        # `migrate` creates or updates the periodic schedules (idempotent by name).
        post_migrate.connect(
            schedules.ensure_schedules, sender=self, dispatch_uid="monitoring-schedules"
        )
        # The Support and Operators groups hold exactly what monitoring.roles says.
        post_migrate.connect(
            roles.sync_roles_after_migrate, sender=self, dispatch_uid="monitoring-roles"
        )
        # Every completion, whatever path made it, keeps the trained files.
        transitions.training_finished.connect(
            files.on_training_finished, dispatch_uid="monitoring-keep-files"
        )
        # The owner's live progress message (docs/eta.md).
        transitions.training_submitted.connect(
            owner_progress.on_submitted, dispatch_uid="monitoring-progress-submitted"
        )
        transitions.training_retried.connect(
            owner_progress.on_retried, dispatch_uid="monitoring-progress-retried"
        )
        transitions.training_finished.connect(
            owner_progress.on_finished, dispatch_uid="monitoring-progress-finished"
        )
        post_delete.connect(
            files.delete_stored, sender=KeptFile, dispatch_uid="monitoring-delete-kept-files"
        )
        if files.superseded not in retention.EXTRA_PRUNABLE:
            retention.EXTRA_PRUNABLE.append(files.superseded)
        notification_signals.send_recorded.connect(
            totals.count_notification_send, dispatch_uid="monitoring-count-notification-sends"
        )
        notification_signals.owner_told.connect(
            totals.observe_owner_told, dispatch_uid="monitoring-observe-owner-told"
        )
