from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = _("Avatar monitoring")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from monitoring import roles, totals
        from monitoring.fal import deliveries  # noqa: F401 (the Delivery proxy model)
        from monitoring.ops import schedules, system_checks  # noqa: F401 (registers the checks)
        from notifications import signals as notification_signals

        # `migrate` creates or updates the periodic schedules (idempotent by name).
        post_migrate.connect(
            schedules.ensure_schedules, sender=self, dispatch_uid="monitoring-schedules"
        )
        # The Support and Operators groups hold exactly what monitoring.roles says.
        post_migrate.connect(
            roles.sync_roles_after_migrate, sender=self, dispatch_uid="monitoring-roles"
        )
        notification_signals.send_recorded.connect(
            totals.count_notification_send, dispatch_uid="monitoring-count-notification-sends"
        )
        notification_signals.owner_told.connect(
            totals.observe_owner_told, dispatch_uid="monitoring-observe-owner-told"
        )
