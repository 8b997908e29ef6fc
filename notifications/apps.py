from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _

OUTBOX_SWEEP = "notifications: sweep the outbox"


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = _("Notifications")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from monitoring.ops import schedules

        # The check run sweeps the outbox when it ends; this schedule runs on the
        # notifications cluster itself, so reschedules (flood control, backoff, dead
        # workers) are picked up every minute even while a long check run is going on.
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
