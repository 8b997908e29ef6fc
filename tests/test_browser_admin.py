"""A staff member in a real browser: log in, open the stuck list, re-check a stuck avatar
whose job fal has finished, see it completed; screenshots of the changelist and the
dashboard go to ``test-artifacts/``.

Chromium is Debian's package (``/usr/bin/chromium``) driven by Playwright's sync API
against pytest-django's live server. The queued re-check runs in a thread of its own,
as a worker would run it: Playwright keeps an event loop in the test's thread, and the
engine's fal calls use ``asyncio.run``.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from monitoring import transitions
from monitoring.models import AvatarStatus, CheckRun, EventSource
from monitoring.trainings import start_training
from tests.browser import (
    ARTIFACTS,
    PASSWORD,
    assert_no_csp_violation,
    browser,
    expect,
    log_in,
    new_page,
)
from tests.support import run_queued_monitoring_tasks

__all__ = ["browser", "expect", "new_page"]  # shared fixtures (tests/browser.py)


def run_queued_work_like_a_worker() -> list:

    results: list = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.extend(run_queued_monitoring_tasks())
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


@pytest.mark.slow
def test_staff_recheck_a_stuck_avatar_in_the_browser(
    new_page, expect, live_server, fal, make_avatar, django_user_model, settings
):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False

    django_user_model.objects.create_superuser("staff", "staff@example.com", PASSWORD)
    # The worker's heartbeat, for the dashboard screenshot.
    CheckRun.objects.create(
        started_at=timezone.now() - timedelta(seconds=25), duration_seconds=0.4, due=2, checked=2
    )
    fal.drop_webhooks()
    fal.script(queue_seconds=FOREVER, queue_position=7)
    waiting = make_avatar(name="Still queued")
    start_training(waiting, source=EventSource.COMMAND)
    avatar = make_avatar(name="Anna portrait")
    training = start_training(avatar, source=EventSource.COMMAND).training
    transitions.flag_stuck(training, reason="in queue for more than 60 minutes")
    fal.finish(training.fal_request_id)

    # The admin's Content-Security-Policy must block nothing the admin itself uses
    # (every page is watched: tests/browser.py).
    page = new_page("en", 1800)
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    page.click("text=Stuck trainings")
    expect(page).to_have_url(re.compile(r"stuck=yes"))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Anna portrait")
    expect(rows.first).to_contain_text("in queue for more than 60 minutes")
    page.screenshot(path=str(ARTIFACTS / "admin-stuck-list.png"), full_page=True)

    rows.first.locator("input.action-select").check()
    page.select_option("select[name=action]", "recheck_now")
    page.click("button[name=index]")
    expect(page.locator("ul.messagelist")).to_contain_text("re-check queued")

    # The request only queued the check; a worker runs it.
    assert fal.status_calls[training.fal_request_id] == 0
    [reports] = run_queued_work_like_a_worker()
    assert reports[0]["after"] == "completed", reports

    page.goto(f"{live_server.url}/admin/monitoring/avatar/")
    anna = page.locator("#result_list tbody tr", has_text="Anna portrait")
    expect(anna.locator(".status-badge")).to_have_text("Completed")
    expect(
        page.locator("#result_list tbody tr", has_text="Still queued").locator(".status-badge")
    ).to_contain_text("In queue, #7")
    page.screenshot(path=str(ARTIFACTS / "admin-avatar-changelist.png"), full_page=True)

    anna.locator("a", has_text="Anna portrait").click()
    expect(page.locator("body")).to_contain_text("Re-check requested")
    expect(page.locator("body")).to_contain_text("diffusers_lora_file")
    page.screenshot(path=str(ARTIFACTS / "admin-avatar-page.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/")
    page.click("text=Dashboard")
    expect(page.locator("#stuck-trainings")).to_contain_text("Nothing is stuck.")
    expect(page.locator("#finished-chart svg")).to_be_visible()
    expect(page.locator("#heartbeat")).to_contain_text("OK")
    page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)
    assert_no_csp_violation(page)

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


@pytest.mark.slow
def test_support_sees_only_the_actions_of_their_role_in_the_browser(
    new_page, expect, live_server, make_avatar, django_user_model, settings
):
    from django.contrib.auth.models import Group

    from monitoring import roles

    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    support = django_user_model.objects.create_user("helpdesk", password=PASSWORD, is_staff=True)
    support.groups.add(Group.objects.get(name=roles.SUPPORT))
    django_user_model.objects.create_user("intern", password=PASSWORD, is_staff=True)
    make_avatar(name="Anna portrait")

    page = new_page()
    log_in(page, live_server, "helpdesk")
    page.goto(f"{live_server.url}/admin/monitoring/avatar/")
    expect(page.locator("#result_list")).to_contain_text("Anna portrait")
    offered = set(
        page.locator("select[name=action] option").evaluate_all(
            "options => options.map(o => o.value)"
        )
    ) - {""}
    assert offered == {"recheck_now", "clear_stuck", "extend_deadline", "resend_notification"}
    page.click("text=Dashboard")
    expect(page.locator("h1")).to_contain_text("Dashboard")

    page = new_page()
    log_in(page, live_server, "intern")
    expect(page.locator("#content")).to_be_visible()
    assert page.locator("#staff-tools").count() == 0
    answer = page.goto(f"{live_server.url}/admin/monitoring/avatar/dashboard/")
    assert answer is not None and answer.status == 403
