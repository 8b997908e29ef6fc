"""Support staff in a real browser, through the real admin: the avatar page's actions,
what the owner is told, the stuck deadline, the counts and the problems banner.

Debian's Chromium driven by Playwright against pytest-django's live server and the fal
emulator. One browser for the module (each launch costs seconds), a fresh context per
scenario. Work a worker would do (the periodic check) runs in a thread of its own:
Playwright keeps an event loop in the test's thread, the engine uses ``asyncio.run``.
Screenshots of the main pages go to ``test-artifacts/`` (English and Russian, 1440 and
390 px wide).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from fakes.fal_signing import delivery_body, lora_payload
from monitoring import transitions
from monitoring.models import (
    AvatarStatus,
    CheckRun,
    EventSource,
    Training,
    WebhookDelivery,
    WebhookOutcome,
)
from monitoring.status_checks import check_trainings
from monitoring.trainings import start_training
from notifications.models import Notification, NotificationKind, NotificationStatus
from tests.browser import ARTIFACTS, browser, expect, new_page, staff_page
from tests.support import WEBHOOK_URL

__all__ = ["browser", "expect", "new_page", "staff_page"]  # shared fixtures (tests/browser.py)

CHECK = EventSource.CHECK

pytestmark = pytest.mark.slow


def like_a_worker(work: Callable[[], Any]) -> Any:
    """Run ``work`` in its own thread, as the worker process would."""
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results[0] if results else None


def periodic_check(*trainings: Training) -> None:
    ids = [t.pk for t in trainings]
    like_a_worker(
        lambda: check_trainings(list(Training.objects.filter(pk__in=ids)), source=EventSource.CHECK)
    )


def started(fal, make_avatar, **fields) -> tuple[Any, Training]:
    avatar = make_avatar(**fields)
    outcome = start_training(avatar, source=EventSource.COMMAND)
    assert outcome.training is not None and outcome.training.fal_request_id, outcome
    return avatar, outcome.training


def avatar_url(live_server, avatar) -> str:
    return f"{live_server.url}/admin/monitoring/avatar/{avatar.pk}/change/"


def test_staff_cancel_recheck_and_mark_failed_from_the_avatar_page(
    staff_page, live_server, fal, make_avatar, make_owner, expect
):
    fal.drop_webhooks()
    english = make_owner(language="en")
    # Queued: fal answers IN_QUEUE at position 3 until cancelled (then a failure,
    # "Request was cancelled by the user", as fal does).
    fal.script(queue_seconds=FOREVER, queue_position=3)
    queued, queued_training = started(fal, make_avatar, name="Queued Anna", owner=english)
    fal.script(queue_seconds=0, run_seconds=FOREVER)
    running, running_training = started(fal, make_avatar, name="Running Boris", owner=english)
    periodic_check(running_training)  # IN_PROGRESS now
    russian = make_owner(language="ru")
    failing, failing_training = started(fal, make_avatar, name="Vera", owner=russian)
    silent, silent_training = started(fal, make_avatar, name="Silent Gleb", owner=english)

    page = staff_page("en")

    # Re-check from the page: fal's answer is shown there, and kept on the timeline.
    page.goto(avatar_url(live_server, queued))
    page.click("#avatar-actions button[value=recheck_now]")
    expect(page.locator("ul.messagelist")).to_contain_text("fal says IN_QUEUE, position 3")
    expect(page.locator("table.timeline tbody tr").first).to_contain_text(
        "fal says IN_QUEUE, position 3"
    )

    # Cancel on a queued and on a running training: each ends cancelled, with the
    # cancelled message for the owner.
    for avatar, training in ((queued, queued_training), (running, running_training)):
        page.goto(avatar_url(live_server, avatar))
        page.click("#avatar-actions button[value=cancel_on_fal]")
        expect(page.locator("#affected")).to_contain_text(avatar.name)
        page.click("input[type=submit][value='Yes, I’m sure']")
        expect(page).to_have_url(re.compile(rf"/avatar/{avatar.pk}/change/"))
        expect(page.locator("ul.messagelist")).to_contain_text("Cancellation requested")
        periodic_check(training)
        page.reload()
        expect(page.locator("#avatar-summary")).to_contain_text("Cancelled")
        expect(page.locator("#avatar-summary")).to_contain_text("was cancelled")
        [message] = Notification.objects.filter(training=training)
        assert message.kind == NotificationKind.CANCELLED, avatar.name
        assert "was cancelled" in message.text
    page.screenshot(path=str(ARTIFACTS / "avatar-page-cancelled-en-1440.png"), full_page=True)

    # Mark failed: the owner's message is chosen, previewed in the owner's language
    # (Russian here) before anything is typed, and sent exactly as chosen.
    page.goto(avatar_url(live_server, failing))
    page.click("#avatar-actions button[value=mark_failed]")
    previews = page.locator("#owner-previews")
    expect(previews).to_contain_text("Причина: сбой на стороне сервиса обучения")
    expect(previews).to_contain_text("Причина: не получилось обработать загруженные фото.")
    page.screenshot(path=str(ARTIFACTS / "mark-failed-confirmation-en-1440.png"), full_page=True)
    page.check("input[name=owner_message][value=technical]")
    page.fill("textarea[name=reason]", "owner asked us to stop")
    page.click("input[type=submit][value='Yes, I’m sure']")
    expect(page).to_have_url(re.compile(rf"/avatar/{failing.pk}/change/"))
    expect(page.locator("ul.messagelist")).to_contain_text("marked failed")
    summary = page.locator("#avatar-summary")
    expect(summary).to_contain_text("owner asked us to stop")  # the internal note
    expect(summary).to_contain_text("сбой на стороне сервиса обучения")  # what the owner reads
    [message] = Notification.objects.filter(training=failing_training)
    assert message.kind == NotificationKind.FAILED
    assert "сбой на стороне сервиса обучения" in message.text
    assert "не получилось обработать загруженные фото" not in message.text

    # ...and with "no message", nothing is sent, and the page says why.
    page.goto(avatar_url(live_server, silent))
    page.click("#avatar-actions button[value=mark_failed]")
    page.check("input[name=owner_message][value=none]")
    page.fill("textarea[name=reason]", "duplicate order")
    page.click("input[type=submit][value='Yes, I’m sure']")
    expect(page.locator("#avatar-summary")).to_contain_text(
        "The owner was not told: staff chose to send no message"
    )
    [message] = Notification.objects.filter(training=silent_training)
    assert message.status == NotificationStatus.SKIPPED
    silent.refresh_from_db()
    assert silent.status == AvatarStatus.ERROR

    # A finished avatar offers neither cancel nor mark failed: both disabled, with why.
    page.goto(avatar_url(live_server, silent))
    for name in ("mark_failed", "cancel_on_fal"):
        expect(page.locator(f"#avatar-actions button[value={name}]")).to_be_disabled()
    expect(page.locator("#unavailable-actions")).to_contain_text("no active training")


def test_stuck_deadline_counts_banner_and_screenshots(
    staff_page, live_server, fal, make_avatar, settings, expect
):
    fal.drop_webhooks()
    settings.TELEGRAM_STAFF_CHAT_ID = None
    CheckRun.objects.create(
        started_at=timezone.now() - timedelta(seconds=20), duration_seconds=0.3, due=2, checked=2
    )
    fal.script(queue_seconds=FOREVER, queue_position=5)
    stuck, stuck_training = started(fal, make_avatar, name="Долго в очереди")
    other, other_training = started(fal, make_avatar, name="A" * 90)
    # Submitted two hours ago: past the 60 min queue limit.
    Training.objects.filter(pk__in=[stuck_training.pk, other_training.pk]).update(
        submitted_at=timezone.now() - timedelta(hours=2)
    )
    periodic_check(stuck_training, other_training)
    stuck_training.refresh_from_db()
    assert stuck_training.stuck_since is not None

    page = staff_page("en")
    page.goto(f"{live_server.url}/admin/")
    expect(page.locator("#stuck-count")).to_have_text("2")
    banner = page.locator("#problems-banner")
    expect(banner.locator("[data-problem=stuck]")).to_contain_text("2 trainings are stuck")
    expect(banner.locator("[data-problem=staff_chat_missing]")).to_be_visible()

    page.goto(f"{live_server.url}/admin/monitoring/avatar/?stuck=yes")
    expect(page).to_have_title(re.compile(r"Stuck trainings \(2\)"))
    expect(page.locator("#stuck-button")).to_have_text("Stuck (2)")

    # Extend the deadline from the avatar page: the flag stays off past the next check.
    page.goto(avatar_url(live_server, stuck))
    expect(page.locator("#avatar-summary")).to_contain_text("in fal's queue for 120 min")
    page.select_option("#extend-hours", "6")
    page.click("#avatar-actions button[value=extend_deadline]")
    expect(page.locator("ul.messagelist")).to_contain_text("not flagged again before")
    periodic_check(stuck_training)
    stuck_training.refresh_from_db()
    assert stuck_training.stuck_since is None
    page.reload()
    expect(page.locator("#avatar-summary .stuck-now")).to_have_count(0)
    expect(page.locator("#avatar-summary")).to_contain_text("Deadline extended until")

    # The banner goes once the staff chat is configured.
    settings.TELEGRAM_STAFF_CHAT_ID = -1001234567
    page.goto(f"{live_server.url}/admin/")
    expect(page.locator("#stuck-count")).to_have_text("1")
    expect(page.locator("[data-problem=staff_chat_missing]")).to_have_count(0)
    expect(page.locator("[data-problem=stuck]")).to_contain_text("1 training is stuck")

    page.goto(f"{live_server.url}/admin/monitoring/avatar/dashboard/")
    expect(page.locator("#verdict")).to_contain_text("1 problem")
    expect(page).to_have_title(re.compile(r"1 problem"))

    # One avatar in every status, so every badge colour is measured.
    make_avatar(name="Draft one", ready=False)
    make_avatar(name="Ready one")
    for end in ("complete", "fail", "cancel"):
        _avatar, training = started(fal, make_avatar, name=f"Ended: {end}")
        if end == "complete":
            transitions.complete(training, lora_url="https://v3.fal.media/x", source="check")
        elif end == "fail":
            transitions.fail(training, error_message="x" * 3000, source="check")
        else:
            transitions.cancel(training, source="check")

    # The main pages, in both languages and both widths, measured as they render.
    for language in ("en", "ru"):
        for width in (1440, 390):
            shot = staff_page(language, width)
            for name, path in (
                ("avatar-page", f"/admin/monitoring/avatar/{other.pk}/change/"),
                ("avatar-list", "/admin/monitoring/avatar/"),
                ("stuck-list", "/admin/monitoring/avatar/?stuck=yes"),
                ("dashboard", "/admin/monitoring/avatar/dashboard/"),
            ):
                shot.goto(f"{live_server.url}{path}")
                shot.screenshot(
                    path=str(ARTIFACTS / f"{name}-{language}-{width}.png"), full_page=True
                )
                if name in ("stuck-list", "dashboard") and width == 390:
                    assert shot.evaluate(NO_HORIZONTAL_SCROLL), (name, language)
                if name == "stuck-list" and width == 390:
                    assert shot.evaluate(TABLE_DOES_NOT_SCROLL), language
                if name in ("avatar-list", "stuck-list") and width == 1440:
                    # The sidebar is open at this width; no key column is cut off.
                    assert shot.locator("#nav-sidebar").is_visible()
                    assert shot.evaluate(CHANGELIST_FITS), (name, language)
            for scheme in ("light", "dark"):
                shot.emulate_media(color_scheme=scheme)
                shot.goto(f"{live_server.url}/admin/monitoring/avatar/")
                ratios = shot.evaluate(BADGE_CONTRAST)
                assert ratios and min(ratios) >= 4.5, (scheme, ratios)


NO_HORIZONTAL_SCROLL = (
    "() => document.documentElement.scrollWidth <= window.innerWidth"
    " && document.body.scrollWidth <= window.innerWidth"
)
TABLE_DOES_NOT_SCROLL = """() => {
  const results = document.querySelector('#changelist .results');
  return !!results && results.scrollWidth <= results.clientWidth + 1;
}"""
CHANGELIST_FITS = """() => {
  const results = document.querySelector('#changelist .results');
  if (!results) return false;
  const inner = results.scrollWidth <= results.clientWidth + 1;
  const right = Math.max(...[...document.querySelectorAll('#result_list th')]
    .map(th => th.getBoundingClientRect().right));
  return inner && right <= window.innerWidth && document.documentElement.scrollWidth <= window.innerWidth;
}"""
# WCAG 2 contrast ratio of each status badge's text against its background.
BADGE_CONTRAST = """() => {
  const lum = (rgb) => {
    const [r, g, b] = rgb.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map(v => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  return [...document.querySelectorAll('.status-badge')].map(el => {
    const s = getComputedStyle(el);
    const a = lum(s.color), b = lum(s.backgroundColor);
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  });
}"""


def _asks_first(page, expect, rows: list[int], action: str, *, left_alone: str, yes: str):
    """Tick ``rows`` on a changelist, run ``action`` as staff do, and check its page:
    the row left alone says why, and the button is not red. Returns the button."""
    for pk in rows:
        page.check(f"input.action-select[value='{pk}']")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")
    expect(page.locator("#unaffected")).to_contain_text(left_alone)
    confirm = page.locator(f"input[type=submit][value='{yes}']")
    expect(confirm).not_to_have_class(re.compile("destructive"))
    return confirm


def test_resend_and_reprocess_ask_first_on_the_same_confirmation_page(
    staff_page, live_server, fal, client, telegram, run_deliveries, training_avatar, expect
):
    # Two webhook deliveries: one fal sent before its training existed (worth
    # re-processing now), one already applied (nothing to do).
    _done, applied_training = training_avatar("req-browser-applied")
    for rid in ("req-browser-applied", "req-browser-early"):
        body = delivery_body(rid, payload=lora_payload(rid))
        headers = fal.signer.headers(body, rid)
        client.post(WEBHOOK_URL, data=body, content_type="application/json", headers=headers)
    # Its training appears without the hand-over that applies early deliveries (as
    # when that hand-over was lost): the delivery stays unmatched until staff act.
    early_avatar, early_training = training_avatar("req-browser-other")
    Training.objects.filter(pk=early_training.pk).update(fal_request_id="req-browser-early")
    early, applied = (
        WebhookDelivery.objects.get(request_id=rid)
        for rid in ("req-browser-early", "req-browser-applied")
    )
    assert (early.outcome, applied.outcome) == (WebhookOutcome.UNMATCHED, WebhookOutcome.APPLIED)

    page = staff_page("en", 1440)
    page.goto(f"{live_server.url}/admin/monitoring/webhookdelivery/")
    confirm = _asks_first(
        page,
        expect,
        [early.pk, applied.pk],
        "reprocess",
        left_alone="a delivery that is “Applied” is not re-processed",
        yes="Yes, I’m sure",
    )
    expect(page.locator("#affected")).to_contain_text("req-browser-early")
    page.screenshot(path=str(ARTIFACTS / "reprocess-confirmation-en-1440.png"), full_page=True)
    assert WebhookDelivery.objects.get(pk=early.pk).outcome == WebhookOutcome.UNMATCHED
    confirm.click()
    expect(page.locator("ul.messagelist")).to_contain_text(
        "Delivery req-browser-early re-processed: Applied"
    )
    early_avatar.refresh_from_db()
    assert early_avatar.status == AvatarStatus.COMPLETED

    # Resend, in Russian on a phone: the sent message is listed as left alone, with why.
    failed_avatar, failed_training = training_avatar("req-browser-failed")
    telegram.script(failed_avatar.owner.telegram_id, telegram.bad_request())
    transitions.complete(failed_training, lora_url="https://v3.fal.media/l", source=CHECK)
    run_deliveries()
    failed = Notification.objects.get(training=failed_training, kind=NotificationKind.READY)
    sent = Notification.objects.get(training=applied_training, kind=NotificationKind.READY)
    assert (failed.status, sent.status) == (NotificationStatus.FAILED, NotificationStatus.SENT)

    page = staff_page("ru", 390)
    page.goto(f"{live_server.url}/admin/notifications/notification/")
    confirm = _asks_first(
        page,
        expect,
        [failed.pk, sent.pk],
        "resend",
        left_alone="его статус — «Отправлено»",
        yes="Да, я уверен",
    )
    page.screenshot(path=str(ARTIFACTS / "resend-confirmation-ru-390.png"), full_page=True)
    assert Notification.objects.get(pk=failed.pk).status == NotificationStatus.FAILED
    confirm.click()
    expect(page.locator("ul.messagelist")).to_be_visible()
    assert Notification.objects.get(pk=failed.pk).status == NotificationStatus.PENDING
    assert Notification.objects.get(pk=sent.pk).status == NotificationStatus.SENT
