"""Check leases: shorter than the interval, renewed while a batch works, recognised by its run."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from bench.scratch import create_active_trainings
from monitoring import status_checks
from monitoring.models import FalStatus, Training

ENDPOINT = "fal-ai/flux-lora-portrait-trainer"


@pytest.fixture
def running(fal, settings):
    """N trainings running on the emulator (any request id is a job that keeps running)."""
    fal.adopt_unknown = True
    settings.CHECK_INTERVAL_SECONDS = 60
    settings.CHECK_LEASE_SECONDS = 30

    def make(n: int) -> list[Training]:
        now = timezone.now()
        _avatars, trainings = create_active_trainings(
            n,
            first_telegram_id=70_000_000,
            training_fields=lambda i: {
                "endpoint": ENDPOINT,
                "fal_request_id": f"lease-{i:05d}-{time.monotonic_ns()}",
                "fal_status": FalStatus.IN_PROGRESS,
                "submitted_at": now - timedelta(minutes=5),
                "started_at": now - timedelta(minutes=4),
                "next_check_at": now - timedelta(seconds=1),
            },
        )
        return trainings

    yield make
    fal.adopt_unknown = False


@pytest.mark.django_db
def test_a_claim_leases_the_trainings_for_less_than_an_interval(running):
    trainings = running(3)
    run_start = timezone.now()

    claimed = status_checks.claim_due(run_start)

    assert claimed == sorted(t.pk for t in trainings)
    leases = set(Training.objects.values_list("next_check_at", flat=True))
    assert leases == {run_start + timedelta(seconds=30)}


@pytest.mark.django_db
def test_a_checked_training_is_due_one_interval_after_its_run(running):
    running(3)

    run = status_checks.run_periodic_check()

    assert run.checked == 3
    due = set(Training.objects.values_list("next_check_at", flat=True))
    assert due == {run.started_at + timedelta(seconds=60)}


@pytest.mark.django_db
def test_a_batch_redelivered_after_a_later_run_claimed_its_trainings_checks_nothing(running, fal):
    """The ORM broker hands a dead worker's batch out again after Q_RETRY_SECONDS."""
    trainings = running(4)
    first_start = timezone.now() - timedelta(seconds=120)
    Training.objects.update(next_check_at=first_start)
    ids = status_checks.claim_due(first_start)  # the run whose worker died
    later = status_checks.run_periodic_check()  # its lease ran out: a later run checked them
    assert later.checked == 4
    calls = sum(fal.status_calls.values())

    reports = status_checks.check_batch(ids, None, first_start)

    assert reports == []
    assert sum(fal.status_calls.values()) == calls
    due = set(Training.objects.values_list("next_check_at", flat=True))
    assert due == {later.started_at + timedelta(seconds=60)}
    assert len(trainings) == 4


@pytest.mark.django_db(transaction=True)
def test_a_live_batch_slower_than_its_lease_keeps_its_trainings(running, fal, settings):
    """While fal is slow the lease is renewed: an overlapping run finds nothing due."""
    settings.CHECK_LEASE_SECONDS = 1.0
    fal.status_latency = 2.5
    running(5)
    run_start = timezone.now()
    ids = status_checks.claim_due(run_start)
    done = threading.Event()

    def batch() -> None:
        try:
            status_checks.check_batch(ids, None, run_start)
        finally:
            connection.close()
            done.set()

    threading.Thread(target=batch).start()
    time.sleep(1.8)  # past the first lease, fal has not answered yet
    overlapping = status_checks.claim_due(timezone.now())
    assert done.wait(30)

    assert overlapping == []
    assert sum(fal.status_calls.values()) == 5
    due = set(Training.objects.values_list("next_check_at", flat=True))
    assert due == {run_start + timedelta(seconds=60)}
