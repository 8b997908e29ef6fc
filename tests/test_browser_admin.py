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
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from monitoring import transitions
from monitoring.models import AvatarStatus, CheckRun, EventSource
from monitoring.trainings import start_training

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct-horse-battery-staple"


def run_queued_work_like_a_worker() -> list:
    from tests.test_admin_actions import run_queued_monitoring_tasks

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
    live_server, fal, make_avatar, django_user_model, settings
):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium package is not installed")
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    ARTIFACTS.mkdir(exist_ok=True)

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

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 900})
        # The admin's Content-Security-Policy must block nothing the admin itself uses.
        blocked: list[str] = []
        page.on(
            "console",
            lambda message: (
                blocked.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )
        try:
            page.goto(f"{live_server.url}/admin/")
            page.fill("#id_username", "staff")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")

            page.click("text=Stuck trainings")
            playwright_api.expect(page).to_have_url(re.compile(r"stuck=yes"))
            rows = page.locator("#result_list tbody tr")
            playwright_api.expect(rows).to_have_count(1)
            playwright_api.expect(rows.first).to_contain_text("Anna portrait")
            playwright_api.expect(rows.first).to_contain_text("in queue for more than 60 minutes")
            page.screenshot(path=str(ARTIFACTS / "admin-stuck-list.png"), full_page=True)

            rows.first.locator("input.action-select").check()
            page.select_option("select[name=action]", "recheck_now")
            page.click("button[name=index]")
            playwright_api.expect(page.locator("ul.messagelist")).to_contain_text("re-check queued")

            # The request only queued the check; a worker runs it.
            assert fal.status_calls[training.fal_request_id] == 0
            [reports] = run_queued_work_like_a_worker()
            assert reports[0]["after"] == "completed", reports

            page.goto(f"{live_server.url}/admin/monitoring/avatar/")
            anna = page.locator("#result_list tbody tr", has_text="Anna portrait")
            playwright_api.expect(anna.locator(".status-badge")).to_have_text("Completed")
            playwright_api.expect(
                page.locator("#result_list tbody tr", has_text="Still queued").locator(
                    ".status-badge"
                )
            ).to_contain_text("In queue, #7")
            page.screenshot(path=str(ARTIFACTS / "admin-avatar-changelist.png"), full_page=True)

            anna.locator("a", has_text="Anna portrait").click()
            playwright_api.expect(page.locator("body")).to_contain_text("Re-check requested")
            playwright_api.expect(page.locator("body")).to_contain_text("diffusers_lora_file")
            page.screenshot(path=str(ARTIFACTS / "admin-avatar-page.png"), full_page=True)

            page.goto(f"{live_server.url}/admin/")
            page.click("text=Dashboard")
            playwright_api.expect(page.locator("#stuck-trainings")).to_contain_text(
                "Nothing is stuck."
            )
            playwright_api.expect(page.locator("#finished-chart svg")).to_be_visible()
            playwright_api.expect(page.locator("#heartbeat")).to_contain_text("OK")
            page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)
            assert blocked == []
        finally:
            browser.close()

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


@pytest.mark.slow
def test_support_sees_only_the_actions_of_their_role_in_the_browser(
    live_server, make_avatar, django_user_model, settings
):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium package is not installed")
    from django.contrib.auth.models import Group

    from monitoring import roles

    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    support = django_user_model.objects.create_user("helpdesk", password=PASSWORD, is_staff=True)
    support.groups.add(Group.objects.get(name=roles.SUPPORT))
    django_user_model.objects.create_user("intern", password=PASSWORD, is_staff=True)
    make_avatar(name="Anna portrait")

    def log_in(page, username: str) -> None:
        page.goto(f"{live_server.url}/admin/")
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            log_in(page, "helpdesk")
            page.goto(f"{live_server.url}/admin/monitoring/avatar/")
            playwright_api.expect(page.locator("#result_list")).to_contain_text("Anna portrait")
            offered = set(
                page.locator("select[name=action] option").evaluate_all(
                    "options => options.map(o => o.value)"
                )
            ) - {""}
            assert offered == {
                "recheck_now",
                "clear_stuck",
                "extend_deadline",
                "resend_notification",
            }
            page.click("text=Dashboard")
            playwright_api.expect(page.locator("h1")).to_contain_text(re.compile("dashboard", re.I))

            page = browser.new_context().new_page()
            log_in(page, "intern")
            playwright_api.expect(page.locator("#content")).to_be_visible()
            assert page.locator("#staff-tools").count() == 0
            answer = page.goto(f"{live_server.url}/admin/monitoring/avatar/dashboard/")
            assert answer is not None and answer.status == 403
        finally:
            browser.close()
