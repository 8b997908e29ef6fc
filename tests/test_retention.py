"""Pruning removes what is old and finished, and nothing of an active training."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Task

from monitoring import transitions
from monitoring.models import (
    AvatarEvent,
    CheckRun,
    EventKind,
    EventSource,
    WebhookDelivery,
    WebhookVerdict,
)
from monitoring.ops import retention

pytestmark = pytest.mark.django_db
LONG_AGO = timezone.now() - timedelta(days=400)


def old_delivery(training=None, request_id: str = "req") -> WebhookDelivery:
    return WebhookDelivery.objects.create(
        request_id=request_id, verdict=WebhookVerdict.VALID, training=training, received_at=LONG_AGO
    )


def old_task(name: str, days: int) -> Task:
    stopped = timezone.now() - timedelta(days=days)
    return Task.objects.create(
        id=name.ljust(32, "0"),
        name=name,
        func="monitoring.tasks.recheck",
        started=stopped,
        stopped=stopped,
        success=True,
    )


@pytest.fixture
def finished_and_active(training_avatar):
    done_avatar, done = training_avatar(request_id="req-done")
    transitions.complete(
        done, lora_url="https://v3.fal.media/a.safetensors", source=EventSource.CHECK
    )
    active_avatar, active = training_avatar(request_id="req-active")
    # Everything is old: only "finished or not" decides.
    AvatarEvent.objects.update(created_at=LONG_AGO)
    return done, active


def test_it_prunes_old_deliveries_and_events_of_finished_trainings_only(finished_and_active):
    done, active = finished_and_active
    old_delivery(done, "req-done")
    old_delivery(None, "req-unmatched")
    kept_delivery = old_delivery(active, "req-active")
    fresh = WebhookDelivery.objects.create(
        request_id="req-new", verdict=WebhookVerdict.VALID, training=done
    )

    deleted = retention.prune()

    assert deleted["webhook_deliveries"] == 2
    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {kept_delivery.pk, fresh.pk}
    # The active training keeps its whole timeline, including the avatar's "created" event.
    assert AvatarEvent.objects.filter(avatar=active.avatar).count() == 3
    assert AvatarEvent.objects.filter(avatar=done.avatar).count() == 0
    assert deleted["avatar_events"] == 4  # created, training, submitted, completed


def test_recent_events_of_finished_trainings_stay(training_avatar):
    _avatar, training = training_avatar(request_id="req-recent")
    transitions.fail(training, error_message="bad photos", source=EventSource.CHECK)

    retention.prune()

    assert AvatarEvent.objects.filter(training=training, kind=EventKind.STATUS).count() == 2


def test_it_prunes_old_heartbeats_but_always_keeps_the_newest(settings):
    settings.RETENTION_CHECK_RUN_DAYS = 7
    ancient = [
        CheckRun.objects.create(started_at=LONG_AGO + timedelta(minutes=i)) for i in range(3)
    ]

    retention.prune()

    assert list(CheckRun.objects.values_list("pk", flat=True)) == [ancient[-1].pk]

    recent = CheckRun.objects.create()
    retention.prune()
    assert list(CheckRun.objects.values_list("pk", flat=True)) == [recent.pk]


def test_it_prunes_old_task_results(settings):
    settings.RETENTION_TASK_RESULT_DAYS = 3
    old_task("old-one", days=10)
    young = old_task("young-one", days=1)

    assert retention.prune()["task_results"] == 1
    assert list(Task.objects.values_list("name", flat=True)) == [young.name]


def test_ages_come_from_the_settings(settings, finished_and_active):
    done, _active = finished_and_active
    settings.RETENTION_WEBHOOK_DELIVERY_DAYS = 1
    WebhookDelivery.objects.create(
        request_id="req-2d",
        verdict=WebhookVerdict.VALID,
        training=done,
        received_at=timezone.now() - timedelta(days=2),
    )
    assert retention.count()["webhook_deliveries"] == 1

    settings.RETENTION_WEBHOOK_DELIVERY_DAYS = 3
    assert retention.count()["webhook_deliveries"] == 0


def test_the_prune_command_dry_run_counts_without_deleting(finished_and_active, capsys):
    done, _active = finished_and_active
    old_delivery(done, "req-done")

    call_command("prune", "--dry-run")
    assert "webhook_deliveries: would delete 1" in capsys.readouterr().out
    assert WebhookDelivery.objects.count() == 1

    call_command("prune")
    assert "webhook_deliveries: deleted 1" in capsys.readouterr().out
    assert WebhookDelivery.objects.count() == 0


def test_migrate_schedules_the_prune_daily():
    from django.utils.module_loading import import_string
    from django_q.models import Schedule

    from monitoring.ops import schedules

    schedules.ensure_schedules()
    schedules.ensure_schedules()

    [schedule] = Schedule.objects.filter(name=schedules.PRUNE)
    assert schedule.schedule_type == Schedule.DAILY
    assert import_string(schedule.func) is retention.prune
