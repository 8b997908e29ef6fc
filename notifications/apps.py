from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = _("Notifications")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from notifications import progress, relay, schedules, signals

        post_migrate.connect(
            schedules.ensure_schedules, sender=self, dispatch_uid="notifications-schedules"
        )
        post_spawn.connect(relay.start_in_notification_worker, dispatch_uid="notification-relay")
        # The progress message's last line follows the outcome message (docs/eta.md).
        signals.owner_told.connect(
            progress.after_outcome_told, dispatch_uid="notifications-progress-last-line"
        )
