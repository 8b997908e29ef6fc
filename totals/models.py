"""One row per counter and label set (see ``totals.add``). Retention never touches it."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class RunningTotal(models.Model):
    name = models.CharField(_("name"), max_length=64)
    # JSON with sorted keys (``totals.labels_text``), e.g. {"outcome": "applied", "verdict": "valid"}.
    labels = models.CharField(_("labels"), max_length=255)
    value = models.BigIntegerField(_("value"), default=0)

    class Meta:
        verbose_name = _("running total")
        verbose_name_plural = _("running totals")
        constraints = [
            models.UniqueConstraint(fields=["name", "labels"], name="running_total_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name}{self.labels} = {self.value}"
