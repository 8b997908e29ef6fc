"""The outbox sweep has its own schedule on the notifications cluster."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django_q.models import Schedule

from notifications.apps import OUTBOX_SWEEP


@pytest.mark.django_db
def test_migrate_schedules_one_outbox_sweep_on_the_notifications_cluster(settings):
    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)

    sweeps = Schedule.objects.filter(name=OUTBOX_SWEEP)
    assert sweeps.count() == 1
    sweep = sweeps.get()
    assert sweep.func == "notifications.delivery.sweep"
    assert sweep.cluster == settings.NOTIFICATION_CLUSTER
    assert sweep.minutes == 1
