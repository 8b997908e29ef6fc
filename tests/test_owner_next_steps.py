"""Owner messages that say what to do next: how to use a ready avatar, and one honest
"taking longer than usual" when a training runs long (through the fake Bot API)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from monitoring import tasks
from monitoring.models import EventSource, Training
from monitoring.trainings import start_training
from notifications.models import Notification, NotificationKind

pytestmark = pytest.mark.django_db(transaction=True)


def _check_now() -> None:
    Training.objects.filter(finished_at__isnull=True).update(
        next_check_at=timezone.now() - timedelta(seconds=1)
    )
    tasks.run_check()


@pytest.mark.parametrize("language", ["en", "ru"])
def test_the_ready_message_links_back_to_the_bot_with_the_avatar(
    fal, telegram, make_avatar, make_owner, run_deliveries, settings, language
):
    settings.OWNER_BOT_LINK = "https://t.me/AvatarStudioBot?start=avatar-{avatar_id}"
    owner = make_owner(language=language)
    avatar = make_avatar(owner=owner, name="Лето")
    start_training(avatar, source=EventSource.COMMAND)
    _check_now()
    run_deliveries()

    [message] = telegram.messages_to(owner.telegram_id)
    assert f'href="https://t.me/AvatarStudioBot?start=avatar-{avatar.pk}"' in message.text
    assert ("create photos" if language == "en" else "создавайте фото") in message.plain


def test_without_a_bot_link_the_ready_message_still_says_how_to_use_it(
    fal, telegram, make_avatar, make_owner, run_deliveries, settings
):
    settings.OWNER_BOT_LINK = None
    owner = make_owner(language="en")
    start_training(make_avatar(owner=owner), source=EventSource.COMMAND)
    _check_now()
    run_deliveries()

    [message] = telegram.messages_to(owner.telegram_id)
    assert "open the bot and choose it to create photos" in message.plain
    assert "<a " not in message.text


def _long_training(fal, make_avatar, make_owner, minutes: int):
    fal.script(queue_seconds=FOREVER)
    owner = make_owner(language="en")
    training = start_training(make_avatar(owner=owner, name="Slow"), source=EventSource.COMMAND)
    long_ago = timezone.now() - timedelta(minutes=minutes)
    Training.objects.filter(pk=training.training.pk).update(
        created_at=long_ago, submitted_at=long_ago
    )
    return owner


def test_an_owner_hears_once_that_a_long_training_takes_longer_than_usual(
    fal, telegram, make_avatar, make_owner, run_deliveries, settings
):
    settings.OWNER_PROGRESS_MESSAGES = False
    settings.OWNER_DELAY_MESSAGE_MINUTES = 30
    slow = _long_training(fal, make_avatar, make_owner, minutes=31)
    young = _long_training(fal, make_avatar, make_owner, minutes=5)

    for _ in range(3):
        _check_now()
        run_deliveries()

    [message] = telegram.messages_to(slow.telegram_id)
    assert "<b>Slow</b> (portrait) is taking longer than usual" in message.text
    assert "as soon as it is done" in message.plain
    assert telegram.messages_to(young.telegram_id) == []
    assert Notification.objects.filter(kind=NotificationKind.DELAYED).count() == 1


def test_with_live_progress_messages_on_no_separate_delay_message_is_sent(
    fal, telegram, make_avatar, make_owner, run_deliveries, settings
):
    settings.OWNER_PROGRESS_MESSAGES = True
    slow = _long_training(fal, make_avatar, make_owner, minutes=120)

    _check_now()
    run_deliveries()

    # The live progress message says it (silently); no separate plain message.
    for message in telegram.messages_to(slow.telegram_id):
        assert message.options.get("disable_notification") == "true"
    assert not Notification.objects.filter(kind=NotificationKind.DELAYED).exists()
