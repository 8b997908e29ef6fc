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
        from monitoring.ops import schedules, system_checks  # noqa: F401 (registers the checks)
        from notifications import delivery

        # `migrate` creates the periodic schedules (idempotent) and syncs the staff roles.
        post_migrate.connect(schedules.ensure_schedules, sender=self, dispatch_uid="m-schedules")
        post_migrate.connect(roles.sync_roles_after_migrate, sender=self, dispatch_uid="m-roles")
        post_delete.connect(files.delete_stored, sender=KeptFile, dispatch_uid="m-delete-files")
        for signal, receiver in (
            # Every completion, whatever path made it, keeps the trained files.
            (transitions.training_finished, files.on_training_finished),
            # The owner's live progress message (docs/eta.md).
            (transitions.training_submitted, owner_progress.on_submitted),
            (transitions.training_retried, owner_progress.on_retried),
            (transitions.training_finished, owner_progress.on_finished),
            (delivery.send_recorded, totals.count_notification_send),
            (delivery.owner_told, totals.observe_owner_told),
        ):
            signal.connect(receiver, dispatch_uid=f"{receiver.__module__}.{receiver.__name__}")
