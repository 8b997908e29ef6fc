"""The transition module on real PostgreSQL: allowed moves, impossible ones, and races."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from monitoring import transitions
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventKind,
    EventSource,
    FalStatus,
    Training,
)
from notifications.models import Notification

S = AvatarStatus


def status_events(avatar) -> list[tuple[str, str]]:
    return list(
        AvatarEvent.objects.filter(avatar=avatar, kind=EventKind.STATUS)
        .order_by("id")
        .values_list("old_status", "new_status")
    )


def test_the_allowed_moves_are_exactly_the_documented_ones():
    assert {old: set(new) for old, new in transitions.ALLOWED_MOVES.items() if new} == {
        S.DRAFT: {S.READY_FOR_TRAINING},
        S.READY_FOR_TRAINING: {S.TRAINING},
        S.TRAINING: {S.COMPLETED, S.ERROR, S.CANCELLED, S.READY_FOR_TRAINING},
        S.ERROR: {S.READY_FOR_TRAINING},
        S.CANCELLED: {S.READY_FOR_TRAINING},
    }


def test_draft_becomes_ready_with_one_event(make_avatar):
    avatar = make_avatar(ready=False)
    assert transitions.mark_ready(avatar, source=EventSource.STAFF)
    avatar.refresh_from_db()
    assert avatar.status == S.READY_FOR_TRAINING
    assert status_events(avatar) == [(S.DRAFT, S.READY_FOR_TRAINING)]


def test_starting_creates_a_submitting_attempt_with_one_event(make_avatar):
    avatar = make_avatar()
    outcome = transitions.begin_training(
        avatar, endpoint="fal-ai/x", arguments={"a": 1}, webhook_url="", source=EventSource.STAFF
    )
    avatar.refresh_from_db()
    assert outcome.changed and avatar.status == S.TRAINING
    assert avatar.current_training == outcome.training
    assert outcome.training.fal_status == FalStatus.SUBMITTING
    assert outcome.training.next_check_at is not None
    assert status_events(avatar) == [(S.READY_FOR_TRAINING, S.TRAINING)]


def test_a_second_start_of_the_same_avatar_is_a_no_op(make_avatar):
    avatar = make_avatar()
    transitions.begin_training(avatar, endpoint="e/x", arguments={}, webhook_url="", source="staff")
    again = transitions.begin_training(
        Avatar.objects.get(pk=avatar.pk),
        endpoint="e/x",
        arguments={},
        webhook_url="",
        source="staff",
    )
    assert not again.changed and again.detail == "already training"
    assert Training.objects.filter(avatar=avatar).count() == 1


@pytest.mark.parametrize(
    ("finish", "kwargs", "expected"),
    [
        (transitions.complete, {"lora_url": "https://v3.fal.media/lora.safetensors"}, S.COMPLETED),
        (transitions.fail, {"error_message": "bad photos", "error_type": "validation"}, S.ERROR),
        (transitions.cancel, {}, S.CANCELLED),
    ],
)
def test_finishing_writes_one_event_and_one_owner_notification(
    training_avatar, finish, kwargs, expected
):
    avatar, training = training_avatar()
    outcome = finish(training, source=EventSource.CHECK, **kwargs)
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert outcome.changed and avatar.status == expected
    assert training.finished_at is not None and training.next_check_at is None
    assert status_events(avatar)[-1] == (S.TRAINING, expected)
    assert Notification.objects.filter(avatar=avatar).count() == 1


def test_completion_keeps_the_lora_and_logs_the_operator_line(training_avatar, caplog):
    avatar, training = training_avatar(request_id="req-done")
    with caplog.at_level("INFO", logger="monitoring"):
        transitions.complete(
            training,
            lora_url="https://v3.fal.media/files/lora.safetensors",
            config_url="https://v3.fal.media/files/config.json",
            result={"diffusers_lora_file": {"url": "https://v3.fal.media/files/lora.safetensors"}},
            source=EventSource.WEBHOOK,
        )
    training.refresh_from_db()
    assert training.lora_url.endswith("lora.safetensors")
    assert training.result["diffusers_lora_file"]["url"].endswith("lora.safetensors")
    assert f"🎉 Обучение завершено для аватара {avatar.pk}" in caplog.text
    assert "req-done" in caplog.text


def test_a_second_completion_is_a_no_op_that_says_already_completed(training_avatar):
    avatar, training = training_avatar()
    transitions.complete(training, lora_url="https://x.example/a", source=EventSource.WEBHOOK)
    late = transitions.fail(training, error_message="late", source=EventSource.CHECK)
    again = transitions.complete(training, lora_url="https://x.example/b", source=EventSource.CHECK)
    avatar.refresh_from_db()
    training.refresh_from_db()
    assert not late.changed and late.detail == "already completed"
    assert not again.changed and again.detail == "already completed"
    assert avatar.status == S.COMPLETED and training.lora_url == "https://x.example/a"
    assert len(status_events(avatar)) == 2  # started, completed
    assert Notification.objects.filter(avatar=avatar).count() == 1


def test_leaving_a_terminal_state_otherwise_is_a_no_op(training_avatar):
    avatar, training = training_avatar()
    transitions.cancel(training, source=EventSource.STAFF)
    outcome = transitions.mark_ready(Avatar.objects.get(pk=avatar.pk), source=EventSource.STAFF)
    # A cancelled avatar is retrained (retrain), never "marked ready" like a draft.
    assert not outcome.changed and outcome.detail == "not possible now (avatar is cancelled)"
    assert Avatar.objects.get(pk=avatar.pk).status == S.CANCELLED


@pytest.mark.parametrize("status", [S.DRAFT, S.READY_FOR_TRAINING])
def test_finishing_an_avatar_that_never_trained_raises_and_changes_nothing(make_avatar, status):
    avatar = make_avatar(ready=status == S.READY_FOR_TRAINING)
    # A training row that the avatar never moved into (only possible by hand).
    stray = Training.objects.create(avatar=avatar, endpoint="e/x")
    Avatar.objects.filter(pk=avatar.pk).update(current_training=stray)
    events_before = AvatarEvent.objects.count()
    with pytest.raises(transitions.InvalidTransition, match=f"from {status} to completed"):
        transitions.complete(stray, lora_url="https://x.example/a", source=EventSource.CHECK)
    assert Avatar.objects.get(pk=avatar.pk).status == status
    assert AvatarEvent.objects.count() == events_before
    assert not Notification.objects.exists()


def test_marking_ready_twice_from_draft_raises_nothing_and_starting_a_draft_raises(make_avatar):
    avatar = make_avatar(ready=False)
    with pytest.raises(transitions.InvalidTransition):
        transitions.begin_training(
            avatar, endpoint="e/x", arguments={}, webhook_url="", source="staff"
        )
    assert Avatar.objects.get(pk=avatar.pk).status == S.DRAFT
    assert not Training.objects.filter(avatar=avatar).exists()


def test_retrain_keeps_the_old_attempt_and_ignores_its_late_results(training_avatar):
    avatar, first = training_avatar(request_id="req-old")
    transitions.fail(first, error_message="bad photos", source=EventSource.WEBHOOK)
    assert transitions.retrain(Avatar.objects.get(pk=avatar.pk), source=EventSource.STAFF)
    second = transitions.begin_training(
        Avatar.objects.get(pk=avatar.pk),
        endpoint="e/x",
        arguments={},
        webhook_url="",
        source="staff",
    ).training
    transitions.record_submitted(second, request_id="req-new", source=EventSource.STAFF)

    late = transitions.complete(first, lora_url="https://x.example/old", source=EventSource.WEBHOOK)

    avatar.refresh_from_db()
    assert not late.changed
    assert avatar.status == S.TRAINING and avatar.current_training_id == second.pk
    assert second.attempt == 2
    assert set(Training.objects.filter(avatar=avatar).values_list("fal_request_id", flat=True)) == {
        "req-old",
        "req-new",
    }


def test_a_refused_submit_leaves_the_avatar_startable(make_avatar):
    avatar = make_avatar()
    training = transitions.begin_training(
        avatar, endpoint="e/x", arguments={}, webhook_url="", source="staff"
    ).training
    outcome = transitions.refuse_submit(
        training, error_type="403", error_message="User is locked", source=EventSource.STAFF
    )
    avatar.refresh_from_db()
    assert outcome.changed and avatar.status == S.READY_FOR_TRAINING
    assert transitions.begin_training(
        avatar, endpoint="e/x", arguments={}, webhook_url="", source="staff"
    ).changed


def test_stuck_is_flagged_once_per_episode_and_clears_on_completion(training_avatar):
    avatar, training = training_avatar()
    assert transitions.flag_stuck(training, reason="in queue for 61 min")
    assert not transitions.flag_stuck(training, reason="in queue for 62 min")
    stuck_alerts = Notification.objects.filter(kind="stuck", avatar=avatar)
    assert stuck_alerts.count() == 1
    transitions.complete(training, lora_url="https://x.example/a", source=EventSource.CHECK)
    training.refresh_from_db()
    assert training.stuck_since is None
    assert status_events(avatar)[-1] == (S.TRAINING, S.COMPLETED)


@pytest.mark.postgres  # races are tested with real threads on PostgreSQL
@pytest.mark.django_db(transaction=True)
def test_two_threads_completing_at_once_make_one_winner_and_one_event(training_avatar):
    assert connection.vendor == "postgresql"
    avatar, training = training_avatar(request_id="req-race")
    barrier = threading.Barrier(2)
    results: list[transitions.Outcome] = []

    def complete_from(source: str) -> None:
        try:
            barrier.wait(timeout=5)
            results.append(
                transitions.complete(
                    Training.objects.get(pk=training.pk),
                    lora_url=f"https://x.example/{source}",
                    source=source,
                )
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=complete_from, args=(s,)) for s in ("webhook", "check")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert sorted(r.changed for r in results) == [False, True]
    assert [r.detail for r in results if not r.changed] == ["already completed"]
    assert status_events(avatar).count((S.TRAINING, S.COMPLETED)) == 1
    assert Notification.objects.filter(avatar=avatar).count() == 1
