"""A Russian reader sees stuck reasons, notes and captions in Russian, whatever was stored."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from monitoring import stuck
from monitoring.models import CheckRun, EventSource, Training
from monitoring.trainings import recheck, start_training

CHANGELIST = reverse("admin:monitoring_avatar_changelist")
DASHBOARD = reverse("admin:monitoring_dashboard")

# The English wording ``stuck.stuck_reason`` stores for the log and the staff alert.
ENGLISH_REASONS = (
    "in fal's queue for",
    "submit outcome unknown",
    "no successful check",
    "active for",
    "min in total",
    "training on fal for",
)


@pytest.fixture
def stuck_in_queue(training_avatar, settings):
    """An avatar flagged stuck by the check itself: 2 h in fal's queue (limit 60 min)."""
    settings.STUCK_IN_QUEUE_MINUTES = 60
    avatar, training = training_avatar(request_id="req-stuck-ru", name="Анна")
    Training.objects.filter(pk=training.pk).update(
        submitted_at=timezone.now() - timedelta(minutes=120)
    )
    training.refresh_from_db()
    flagged, _cleared = stuck.review([training], timezone.now())
    assert flagged == 1
    training.refresh_from_db()
    assert training.stuck_reason.startswith("in fal's queue for")  # stored in English
    return avatar, training


def _text(response) -> str:
    """The page's visible text: tags and the inline script/style removed."""
    html = response.content.decode()
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def test_a_stuck_avatars_page_gives_the_reason_in_russian(admin_client, stuck_in_queue):
    avatar, _training = stuck_in_queue
    page = _text(
        admin_client.get(
            reverse("admin:monitoring_avatar_change", args=[avatar.pk]),
            HTTP_ACCEPT_LANGUAGE="ru",
        )
    )

    assert "в очереди fal уже 120 мин; лимит — 60 мин" in page  # summary and timeline
    for english in ENGLISH_REASONS:
        assert english not in page


def test_the_stuck_list_the_dashboard_and_the_lists_give_reasons_in_russian(
    admin_client, stuck_in_queue
):
    CheckRun.objects.create(started_at=timezone.now(), duration_seconds=0.1, due=1, checked=1)
    pages = [
        _text(admin_client.get(CHANGELIST + "?stuck=yes", HTTP_ACCEPT_LANGUAGE="ru")),
        _text(admin_client.get(DASHBOARD, HTTP_ACCEPT_LANGUAGE="ru")),
        # The raw lists too: their reason and message columns are worded, not stored text.
        _text(
            admin_client.get(
                reverse("admin:monitoring_training_changelist"), HTTP_ACCEPT_LANGUAGE="ru"
            )
        ),
        _text(
            admin_client.get(
                reverse("admin:monitoring_avatarevent_changelist"), HTTP_ACCEPT_LANGUAGE="ru"
            )
        ),
    ]

    for page in pages:
        assert "в очереди fal уже 120 мин" in page
        for english in ENGLISH_REASONS:
            assert english not in page
    events = pages[-1]
    assert "Обучается" in events and "ready_for_training" not in events  # statuses by label


def test_a_staff_recheck_note_and_the_event_captions_are_in_russian(
    admin_client, admin_user, fal, make_avatar, settings
):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    assert training is not None and training.fal_request_id
    recheck([training], source=EventSource.STAFF, actor=admin_user)

    page = _text(
        admin_client.get(
            reverse("admin:monitoring_avatar_change", args=[avatar.pk]),
            HTTP_ACCEPT_LANGUAGE="ru",
        )
    )

    assert "Проверено сотрудником" in page
    assert "Checked by staff" not in page
    for english in ("(staff)", "(check)", "(webhook)", "staff action", "management command"):
        assert english not in page


def test_the_staff_alert_words_the_reason_in_russian_like_the_rest_of_it(stuck_in_queue):
    from notifications.models import Notification, NotificationKind

    _avatar, training = stuck_in_queue
    alert = Notification.objects.get(kind=NotificationKind.STUCK, training=training)

    assert "Обучение зависло" in alert.text
    assert "в очереди fal уже 120 мин; лимит — 60 мин" in alert.text
    assert "in fal's queue" not in alert.text
