from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TotalsConfig(AppConfig):
    name = "totals"
    verbose_name = _("Running totals")
    default_auto_field = "django.db.models.BigAutoField"
