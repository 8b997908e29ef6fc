from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _

OUTBOX_SWEEP = "notifications: sweep the outbox"


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = _("Notifications")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django_q.signals import post_spawn

        from monitoring.ops import schedules
        from notifications import relay

        # The relay runs in the notifications cluster's worker processes.
        post_spawn.connect(relay.start_in_notification_worker, dispatch_uid="notification-relay")

        # The check run sweeps the outbox when it ends; this schedule runs on the
        # notifications cluster itself and merges stuck alerts: the net under the relay.
        if not any(spec["name"] == OUTBOX_SWEEP for spec in schedules.SCHEDULES):
            schedules.SCHEDULES.append(
                {
                    "name": OUTBOX_SWEEP,
                    "func": "notifications.delivery.sweep",
                    "schedule_type": "I",  # Schedule.MINUTES
                    "minutes": 1,
                    "repeats": -1,
                    "cluster": settings.NOTIFICATION_CLUSTER,
                }
            )
