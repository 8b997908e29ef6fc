"""The dashboard on a phone (390 px) and a desktop (1440 px) in a real browser: every
number leads to its filtered list, the stuck table becomes cards, and the headline
counts exactly what is red. Screenshots go to ``test-artifacts/dashboard-*.png``."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from monitoring import transitions
from monitoring.models import CheckRun, EventSource, Training
from notifications.models import Notification, NotificationStatus
from tests.browser import ARTIFACTS, browser, expect, new_page, staff_page
from tests.test_browser_staff import NO_HORIZONTAL_SCROLL

__all__ = ["browser", "expect", "new_page", "staff_page"]  # shared fixtures (tests/browser.py)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CARDS_NOT_TABLE = """() => {
  const row = document.querySelector('#stuck-trainings tbody tr');
  const head = document.querySelector('#stuck-trainings thead');
  return getComputedStyle(row).display === 'block' && head.getBoundingClientRect().height <= 1;
}"""
NUMBERS_ARE_LINKS = """() => [...document.querySelectorAll('.dash-big:not(.dash-word), #status-counts td.n, #notification-backlog p')]
  .every(el => el.querySelector('a[href]') !== null)"""


@pytest.fixture
def busy_day(training_avatar, settings):
    """20 stuck trainings with long names, failures told to nobody, fal errors."""
    settings.TELEGRAM_STAFF_CHAT_ID = -100500
    CheckRun.objects.create(
        started_at=timezone.now() - timedelta(seconds=20),
        duration_seconds=0.3,
        due=40,
        checked=40,
        errors=2,
    )
    for i in range(20):
        _avatar, training = training_avatar(
            f"req-stuck-{i:02d}-0123456789abcdef", name=f"Очень длинное имя аватара номер {i}"
        )
        transitions.flag_stuck(training, reason="in fal's queue for a long time")
        Training.objects.filter(pk=training.pk).update(check_failures=1 if i < 2 else 0)
    for i in range(3):
        _avatar, training = training_avatar(f"req-failed-{i}", name=f"Failed {i}")
        transitions.fail(training, error_message="bad photos", source=EventSource.CHECK)
        Notification.objects.filter(training=training).update(status=NotificationStatus.GIVEN_UP)


@pytest.mark.parametrize("width", [390, 1440])
def test_the_dashboard_reads_and_leads_somewhere_at_every_width(
    busy_day, staff_page, live_server, expect, width
):
    page = staff_page("en", width)
    page.goto(f"{live_server.url}/admin/monitoring/avatar/dashboard/")
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}.png"), full_page=True)

    problems = page.locator("#verdict li")
    count = problems.count()
    expect(page.locator("#verdict h2")).to_have_text(f"{count} problems")
    codes = set(problems.evaluate_all("items => items.map(i => i.dataset.problem)"))
    assert {"stuck", "fal_errors", "notifications_failed"} <= codes
    # Every red card is one of the listed problems (none is red on its own).
    red = set(page.locator(".dash-late").evaluate_all("els => els.map(e => e.id)"))
    assert red == {"stuck-trainings", "fal-errors", "notification-backlog"}
    assert page.evaluate(NUMBERS_ARE_LINKS)
    if width == 390:
        assert page.evaluate(NO_HORIZONTAL_SCROLL)
        assert page.evaluate(CARDS_NOT_TABLE)
        # 4,845 px before with the wide stuck table alone; now the oldest ten stuck
        # trainings as cards (the list has all) and two more cards (money, typical times).
        assert page.evaluate("() => document.documentElement.scrollHeight") < 4600
        expect(page.locator("#stuck-trainings")).to_contain_text("all 20 in the stuck list")

    page.click("#undelivered")
    expect(page).to_have_url(re.compile(r"notification=problem"))
    expect(page.locator("#result_list tbody tr")).to_have_count(3)

    page.go_back()
    page.click("#fal-errors a.num")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)


def test_the_avatar_timeline_reads_on_a_phone_without_scrolling_sideways(
    training_avatar, staff_page, live_server
):
    avatar, training = training_avatar("req-timeline-0123456789abcdef0123456789", name="A" * 60)
    transitions.flag_stuck(training, reason="in fal's queue for a long time " * 5)
    transitions.fail(training, error_message="x" * 3000, source=EventSource.CHECK)
    page = staff_page("ru", 390)
    page.goto(f"{live_server.url}/admin/monitoring/avatar/{avatar.pk}/change/")
    page.screenshot(path=str(ARTIFACTS / "avatar-timeline-390.png"), full_page=True)

    timeline = page.locator("#avatar-timeline")
    assert timeline.evaluate("el => el.scrollWidth <= el.clientWidth + 1")
    assert page.evaluate(NO_HORIZONTAL_SCROLL)
    # Each event is a card with its labels, not a six-column row.
    first = page.locator("table.timeline tbody tr").first
    assert first.evaluate("el => getComputedStyle(el).display") == "block"
