from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = _("Avatar monitoring")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from monitoring import system_checks  # noqa: F401  (registers the checks)
