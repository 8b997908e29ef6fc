"""Staff alerts on Telegram link to the avatar and the list, entirely in the staff
chat's language (through the fake Bot API)."""

from __future__ import annotations

import re

import pytest

from monitoring import transitions
from monitoring.models import EventSource
from notifications import delivery
from notifications.models import Notification, NotificationKind
from tests.fixtures_telegram import STAFF_CHAT_ID

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "https://monitor.example.com"
LATIN_WORD = re.compile(r"\b[A-Za-z]{3,}\b")


@pytest.fixture(autouse=True)
def public_base_url(settings):
    settings.PUBLIC_BASE_URL = BASE


def test_a_stuck_alert_links_to_the_avatar_and_the_stuck_list(
    telegram, training_avatar, run_deliveries
):
    avatar, training = training_avatar(name="Завис")
    transitions.flag_stuck(training, reason="в очереди fal больше часа")
    delivery.sweep()
    run_deliveries()

    [alert] = telegram.messages_to(STAFF_CHAT_ID)
    assert f'href="{BASE}/admin/monitoring/avatar/{avatar.pk}/change/"' in alert.text
    assert f'href="{BASE}/admin/monitoring/avatar/?stuck=yes"' in alert.text
    assert "Все зависшие обучения" in alert.plain


def test_an_undelivered_owner_message_alert_is_in_russian_with_links(
    telegram, training_avatar, drain, settings
):
    settings.LANGUAGE_CODE = "en"  # the worker's default: the alert is Russian anyway
    avatar, training = training_avatar(name="Невезучий")
    telegram.script(avatar.owner.telegram_id, telegram.bad_request())
    transitions.complete(
        training, lora_url="https://v3.fal.media/l.safetensors", source=EventSource.CHECK
    )
    drain(lambda: bool(telegram.messages_to(STAFF_CHAT_ID)))

    [alert] = telegram.messages_to(STAFF_CHAT_ID)
    row = Notification.objects.get(kind=NotificationKind.READY)
    assert f"Уведомление #{row.pk} (Аватар готов)" in alert.plain
    assert f'href="{BASE}/admin/notifications/notification/{row.pk}/change/"' in alert.text
    assert f'href="{BASE}/admin/monitoring/avatar/{avatar.pk}/change/"' in alert.text
    # Only Telegram's own words, quoted as code, are not Russian.
    prose = re.sub(r"<code>.*?</code>|<[^>]+>|@\w+", "", alert.text)
    assert LATIN_WORD.findall(prose) == []


def test_telegrams_known_reasons_are_worded_in_russian():
    from django.utils import translation

    from notifications.messages import telegram_reason_words

    with translation.override("ru"):
        words = telegram_reason_words("Forbidden: bot was blocked by the user")
    assert words == "владелец заблокировал бота"
