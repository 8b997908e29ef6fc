"""Startup restore, the schedule set up by migrate, and a real qcluster against the emulator."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command, get_commands
from django.utils import timezone

from monitoring import status_checks
from monitoring.models import AvatarStatus, CheckRun, EventSource, Training
from monitoring.ops.schedules import PERIODIC_CHECK
from monitoring.trainings import start_training
from tests.worker_process import qcluster

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


def test_restore_makes_every_active_training_due_whatever_its_age(training_avatar, caplog):
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    far = timezone.now() + timedelta(hours=5)
    old_avatar, old = training_avatar(request_id="old-one")
    # Three days old and never seen running: the old monitor skipped exactly these.
    Training.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(days=3), started_at=None, next_check_at=far
    )
    _, fresh = training_avatar(request_id="fresh-one")
    Training.objects.filter(pk=fresh.pk).update(next_check_at=far)
    # Checked 10 s ago by another host: it keeps its place (once per interval).
    _, just_checked = training_avatar(request_id="checked-elsewhere")
    Training.objects.filter(pk=just_checked.pk).update(
        last_checked_at=timezone.now() - timedelta(seconds=10), next_check_at=far
    )
    _, finished = training_avatar(request_id="finished-one")
    Training.objects.filter(pk=finished.pk).update(finished_at=timezone.now(), next_check_at=None)
    OrmQ.objects.all().delete()

    with caplog.at_level(logging.INFO, logger="monitoring"):
        count = status_checks.restore_monitoring()

    assert count == 3
    assert "✅ Мониторинг восстановлен для 3 аватаров" in caplog.text
    assert Training.objects.filter(next_check_at__lte=timezone.now()).count() == 2
    assert Training.objects.get(pk=just_checked.pk).next_check_at == far
    assert Training.objects.get(pk=finished.pk).next_check_at is None
    [queued] = [SignedPackage.loads(row.payload) for row in OrmQ.objects.all()]
    assert queued["func"] == "monitoring.tasks.run_check"
    assert queued["args"] == (CheckRun.Kind.RESTORE,)


def test_the_monitoring_app_provides_qcluster_ahead_of_django_q():
    assert get_commands()["qcluster"] == "monitoring"


def test_migrate_twice_leaves_one_schedule(settings):
    from django_q.models import Schedule

    Schedule.objects.all().delete()
    call_command("migrate", verbosity=0)
    settings.CHECK_INTERVAL_SECONDS = 120
    call_command("migrate", verbosity=0)
    [schedule] = Schedule.objects.filter(name=PERIODIC_CHECK)
    assert schedule.func == "monitoring.tasks.run_check"
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 2, -1)
    assert settings.Q_CLUSTER["catch_up"] is False
    assert settings.Q_CLUSTER["timeout"] < settings.Q_CLUSTER["retry"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_qcluster_restores_and_completes_a_training_left_active(fal, make_avatar, tmp_path):
    fal.drop_webhooks()
    fal.script(queue_seconds=3600)
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    # Far from due: only the restore can make the worker check it now.
    Training.objects.filter(pk=training.pk).update(
        next_check_at=timezone.now() + timedelta(hours=1)
    )
    fal.finish(training.fal_request_id)  # finished while "the worker was down"

    log = tmp_path / "qcluster.log"
    with qcluster(log, Q_WORKERS="1") as worker:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and worker.poll() is None:
            avatar.refresh_from_db()
            if avatar.status != AvatarStatus.TRAINING:
                break
            time.sleep(0.3)
    output = log.read_text()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED, output[-3000:]
    assert "✅ Мониторинг восстановлен для 1 аватара" in output
    assert f"🎉 Обучение завершено для аватара {avatar.pk}" in output
    assert CheckRun.objects.filter(kind=CheckRun.Kind.RESTORE, completed=1).exists()
