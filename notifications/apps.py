from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _

# The notifications cluster's own once-a-minute sweeps (the net under the relay).
OUTBOX_SWEEP = "notifications: sweep the outbox"
PROGRESS_SWEEP = "notifications: push due progress messages"


def ensure_schedules(**kwargs: Any) -> None:
    """post_migrate receiver: set-up twice leaves one sweep."""
    from django_q.models import Schedule

    for name, func in (
        (OUTBOX_SWEEP, "notifications.delivery.sweep"),
        (PROGRESS_SWEEP, "notifications.progress.sweep"),
    ):
        Schedule.objects.using(kwargs.get("using", "default")).update_or_create(
            name=name,
            defaults={
                "func": func,
                "schedule_type": Schedule.MINUTES,
                "minutes": 1,
                "repeats": -1,
                "cluster": settings.NOTIFICATION_CLUSTER,
            },
        )


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = _("Notifications")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from notifications import delivery, progress

        post_migrate.connect(ensure_schedules, sender=self, dispatch_uid="notifications-schedules")
        post_spawn.connect(delivery.start_relay, dispatch_uid="notification-relay")
        # The progress message's last line follows the outcome message (docs/eta.md).
        delivery.owner_told.connect(
            progress.after_outcome_told, dispatch_uid="notifications-progress-last-line"
        )
