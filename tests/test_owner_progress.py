"""The owner's live progress message, end to end: the periodic check against the fal
emulator, python-telegram-bot against the fake Bot API (docs/eta.md)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from monitoring import tasks
from monitoring.models import AvatarStatus, EventSource, Training
from monitoring.trainings import start_training
from notifications import progress
from notifications.models import ProgressMessage, ProgressState
from tests.support import run_queued_monitoring_tasks

pytestmark = pytest.mark.django_db(transaction=True)

EDIT_SECONDS = 5  # the smallest interval the setting allows
FAL_DOWN = {
    "error": "Runner disconnected",
    "error_type": "runner_disconnected",
    "result_status": 503,
}


@pytest.fixture(autouse=True)
def progress_on(settings, telegram):
    settings.OWNER_PROGRESS_MESSAGES = True
    settings.OWNER_PROGRESS_EDIT_SECONDS = EDIT_SECONDS
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.FAL_PLATFORM_TIMEOUT_SECONDS = 2.0


def check(run_deliveries) -> None:
    """One periodic check of every active training, then what the workers would send."""
    Training.objects.active().update(next_check_at=timezone.now() - timedelta(seconds=1))
    tasks.run_check()
    run_queued_monitoring_tasks()
    run_deliveries()


def start(fal, make_avatar, make_owner, run_deliveries, *, language="en", **script):
    fal.drop_webhooks()  # the checks find the outcome: one path, under the test's control
    fal.script(**script)
    owner = make_owner(language=language)
    avatar = make_avatar(owner=owner, name="Anna <3")
    training = start_training(avatar, source=EventSource.COMMAND).training
    assert training is not None and training.fal_request_id
    run_deliveries()
    return owner, avatar, training


def wait_until_editable(chat_id: int) -> None:
    """Sleep until OWNER_PROGRESS_EDIT_SECONDS have passed since the message last changed."""
    row = ProgressMessage.objects.get(chat_id=chat_id)
    assert row.last_edit_at is not None
    left = (row.last_edit_at + timedelta(seconds=EDIT_SECONDS) - timezone.now()).total_seconds()
    if left > 0:
        time.sleep(left + 0.05)


def let_the_interval_pass(chat_id: int) -> None:
    """What waiting OWNER_PROGRESS_EDIT_SECONDS does, without the wait: the message's last
    change and its next turn move that far into the past. The first test waits for real."""
    interval = timedelta(seconds=EDIT_SECONDS)
    ProgressMessage.objects.filter(chat_id=chat_id).update(
        last_edit_at=F("last_edit_at") - interval, next_at=F("next_at") - interval
    )


def test_queue_run_complete_is_one_silent_message_edited_then_the_ready_message(
    fal, telegram, make_avatar, make_owner, run_deliveries
):
    owner, avatar, training = start(
        fal, make_avatar, make_owner, run_deliveries, queue_seconds=FOREVER, queue_position=3
    )
    [first] = telegram.messages_to(owner.telegram_id)
    assert first.plain.startswith("⏳ Training «Anna <3»: in line, 3 ahead of you.")
    assert "Ready in about" in first.plain
    assert first.options.get("disable_notification") == "true"  # the phone does not ring

    # fal starts it: the phase changed, but the interval since the send has not passed.
    fal.script(training.fal_request_id, queue_seconds=0, run_seconds=FOREVER)
    check(run_deliveries)
    assert telegram.edits_to(owner.telegram_id) == []
    wait_until_editable(owner.telegram_id)
    progress.sweep()
    [running] = telegram.edits_to(owner.telegram_id)
    assert running.message_id == first.message_id
    assert running.plain.startswith("🏋️ Training «Anna <3»: training now.")

    # fal finishes: the outcome is its own message (it rings), then the last line.
    fal.finish(training.fal_request_id)
    check(run_deliveries)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    messages = telegram.messages_to(owner.telegram_id)
    assert [m.plain.splitlines()[0] for m in messages] == [
        first.plain.splitlines()[0],
        "🎉 Your avatar is ready!",
    ]
    assert "disable_notification" not in messages[1].options
    wait_until_editable(owner.telegram_id)
    progress.sweep()
    check(run_deliveries)
    progress.sweep()

    edits = telegram.edits_to(owner.telegram_id)
    assert len(edits) == 2
    assert edits[-1].plain == "✅ Training «Anna <3»: done."
    assert edits[-1].received_at > messages[1].received_at  # after the outcome message
    times = [first.received_at] + [e.received_at for e in edits]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap >= EDIT_SECONDS for gap in gaps), gaps
    assert telegram.text_of(owner.telegram_id, first.message_id) == edits[-1].text
    assert ProgressMessage.objects.get(chat_id=owner.telegram_id).state == ProgressState.DONE


def test_a_blocked_owner_gets_no_edit_after_the_first_403(
    fal, telegram, make_avatar, make_owner, run_deliveries
):
    owner, _avatar, training = start(
        fal, make_avatar, make_owner, run_deliveries, queue_seconds=FOREVER, queue_position=3
    )
    assert len(telegram.messages_to(owner.telegram_id)) == 1
    telegram.script(owner.telegram_id, telegram.blocked())
    fal.script(training.fal_request_id, queue_seconds=0, run_seconds=FOREVER)
    let_the_interval_pass(owner.telegram_id)
    check(run_deliveries)
    requests = telegram.requests_to(owner.telegram_id)
    assert ProgressMessage.objects.get(chat_id=owner.telegram_id).state == ProgressState.STOPPED

    fal.finish(training.fal_request_id)
    check(run_deliveries)
    let_the_interval_pass(owner.telegram_id)
    progress.sweep()
    check(run_deliveries)
    # Nothing more reached Telegram: no edit, and the outcome found the chat unreachable.
    assert telegram.requests_to(owner.telegram_id) == requests
    assert telegram.edits_to(owner.telegram_id) == []


def test_with_progress_messages_off_only_the_outcome_is_sent(
    fal, telegram, settings, make_avatar, make_owner, run_deliveries
):
    settings.OWNER_PROGRESS_MESSAGES = False
    owner, _avatar, training = start(
        fal, make_avatar, make_owner, run_deliveries, queue_seconds=FOREVER, queue_position=3
    )
    fal.script(training.fal_request_id, queue_seconds=0, run_seconds=FOREVER)
    check(run_deliveries)
    fal.finish(training.fal_request_id)
    check(run_deliveries)
    [ready] = telegram.messages_to(owner.telegram_id)
    assert ready.plain.startswith("🎉 Your avatar is ready!")
    assert telegram.edits_to(owner.telegram_id) == []
    assert not ProgressMessage.objects.exists()


def test_a_retry_after_fals_failure_keeps_the_same_message(
    fal, telegram, make_avatar, make_owner, run_deliveries
):
    owner, avatar, _training = start(
        fal, make_avatar, make_owner, run_deliveries, fail_first=1, queue_seconds=1, **FAL_DOWN
    )
    [first] = telegram.messages_to(owner.telegram_id)
    let_the_interval_pass(owner.telegram_id)
    time.sleep(1)  # fal's first job has failed by now
    check(run_deliveries)  # the failure: a new attempt, the same message says so
    [hiccup] = telegram.edits_to(owner.telegram_id)
    assert hiccup.message_id == first.message_id
    # "fal had a hiccup, starting again", or, when fal accepted the new attempt before the
    # edit went out, the new attempt's place in line with that note.
    assert "fal had a hiccup" in hiccup.plain
    check(run_deliveries)  # the new attempt is sent: fal accepts it
    # The message's next text is about the new attempt, and still says it was retried.
    row = ProgressMessage.objects.get(chat_id=owner.telegram_id)
    assert row.text.startswith("⏳ Training «<b>Anna &lt;3</b>»: in line")
    assert row.text.endswith("(fal had a hiccup; we started it again.)")
    for _ in range(3):  # the retry runs and completes
        check(run_deliveries)
        time.sleep(0.6)
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    messages = telegram.messages_to(owner.telegram_id)
    assert len(messages) == 2 and messages[1].plain.startswith("🎉 Your avatar is ready!")
    row = ProgressMessage.objects.get(chat_id=owner.telegram_id)
    assert row.training_id == avatar.current_training_id  # moved to the new attempt


def test_russian_owners_read_it_in_russian(fal, telegram, make_avatar, make_owner, run_deliveries):
    owner, _avatar, _training = start(
        fal,
        make_avatar,
        make_owner,
        run_deliveries,
        language="ru",
        queue_seconds=FOREVER,
        queue_position=0,
    )
    [first] = telegram.messages_to(owner.telegram_id)
    assert first.plain.startswith("⏳ Обучение «Anna <3»: в очереди, вы следующий.")
    assert "Будет готово примерно через" in first.plain


# --- Telegram's answers -----------------------------------------------------------------------


def test_flood_control_on_the_first_send_waits_retry_after(
    fal, telegram, make_avatar, make_owner, run_deliveries
):
    owner = make_owner(language="en")
    telegram.script(owner.telegram_id, telegram.retry_after(2))
    fal.script(queue_seconds=FOREVER, queue_position=2)
    avatar = make_avatar(owner=owner, name="Anna")
    start_training(avatar, source=EventSource.COMMAND)
    asked = timezone.now()
    run_deliveries()
    row = ProgressMessage.objects.get(chat_id=owner.telegram_id)
    assert row.state == ProgressState.NEW and "retry after 2" in row.last_error
    assert asked + timedelta(seconds=2) <= row.next_at <= timezone.now() + timedelta(seconds=2)
    assert progress.sweep() == 0 and telegram.messages_to(owner.telegram_id) == []
    time.sleep(max(0.0, (row.next_at - timezone.now()).total_seconds()) + 0.05)
    progress.sweep()
    [message] = telegram.messages_to(owner.telegram_id)
    assert message.plain.startswith("⏳ Training «Anna»")


def test_a_first_send_whose_answer_is_lost_is_dropped_never_resent(
    fal, telegram, settings, make_avatar, make_owner, run_deliveries
):
    settings.NOTIFICATION_SEND_TIMEOUT_SECONDS = 0.3
    owner = make_owner(language="en")
    telegram.script(owner.telegram_id, telegram.slow(1.0))  # arrives, but after we gave up
    fal.script(queue_seconds=FOREVER, queue_position=2)
    training = start_training(make_avatar(owner=owner), source=EventSource.COMMAND).training
    run_deliveries()
    assert ProgressMessage.objects.get(chat_id=owner.telegram_id).state == ProgressState.DROPPED

    telegram.wait_for_messages(1)  # the slow one reaches Telegram after we gave up
    fal.script(training.fal_request_id, queue_seconds=0, run_seconds=FOREVER)
    let_the_interval_pass(owner.telegram_id)
    check(run_deliveries)
    progress.sweep()
    assert len(telegram.messages_to(owner.telegram_id)) == 1  # the slow one, once
    assert telegram.edits_to(owner.telegram_id) == []


def test_a_deleted_message_stops_the_edits(fal, telegram, make_avatar, make_owner, run_deliveries):
    owner, _avatar, training = start(
        fal, make_avatar, make_owner, run_deliveries, queue_seconds=FOREVER, queue_position=3
    )
    [first] = telegram.messages_to(owner.telegram_id)
    telegram.delete_message(owner.telegram_id, first.message_id)
    fal.script(training.fal_request_id, queue_seconds=0, run_seconds=FOREVER)
    let_the_interval_pass(owner.telegram_id)
    check(run_deliveries)
    row = ProgressMessage.objects.get(chat_id=owner.telegram_id)
    assert (
        row.state == ProgressState.STOPPED and "message to edit not found" in row.last_error.lower()
    )
    requests = telegram.requests_to(owner.telegram_id)
    fal.finish(training.fal_request_id)
    check(run_deliveries)
    let_the_interval_pass(owner.telegram_id)
    progress.sweep()
    assert telegram.requests_to(owner.telegram_id) == requests + 1  # the ready message only
    assert telegram.edits_to(owner.telegram_id) == []


def test_message_is_not_modified_counts_as_done(
    fal, telegram, make_avatar, make_owner, run_deliveries
):
    owner, _avatar, _training = start(
        fal, make_avatar, make_owner, run_deliveries, queue_seconds=FOREVER, queue_position=3
    )
    # An earlier edit whose answer was lost had in fact arrived: Telegram has the text.
    ProgressMessage.objects.filter(chat_id=owner.telegram_id).update(
        sent_text="", pending=True, last_edit_at=timezone.now() - timedelta(minutes=1)
    )
    assert progress.sweep() == 1
    row = ProgressMessage.objects.get(chat_id=owner.telegram_id)
    assert (row.state, row.pending, row.last_error) == (ProgressState.LIVE, False, "")
    assert row.sent_text == row.text
    assert telegram.edits_to(owner.telegram_id) == []  # nothing changed for the owner
