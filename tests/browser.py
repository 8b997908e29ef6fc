"""The browser tests' shared pieces: Debian's Chromium driven by Playwright's sync API
against pytest-django's live server, a logged-in staff page, and the listener that
fails a test on any Content-Security-Policy violation.

Every page a browser test opens goes through ``watch_csp``: an init script (run before
the page's own scripts) records each ``securitypolicyviolation`` into
``window.cspViolations`` and hands it to the test, so a style or script the admin's
policy blocks (avatarsite/csp.py) fails the test that met it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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

CSP_LISTENER = """
window.cspViolations = [];
document.addEventListener('securitypolicyviolation', (event) => {
  const violation = {
    page: location.pathname + location.search,
    directive: event.violatedDirective,
    blocked: event.blockedURI,
    sample: event.sample,
  };
  window.cspViolations.push(violation);
  window.reportCspViolation(violation);
});
"""


def watch_csp(context: Any) -> list[dict[str, str]]:
    """Record every CSP violation of every page ``context`` opens; returns the record."""
    violations: list[dict[str, str]] = []
    context.expose_binding("reportCspViolation", lambda _source, v: violations.append(v))
    context.add_init_script(CSP_LISTENER)
    return violations


def assert_no_csp_violation(page: Any) -> None:
    """The page open now met no CSP violation (its own record, read from the page)."""
    assert page.evaluate("window.cspViolations") == [], page.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium package is not installed")
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM
    # calls stay synchronous, so Django's async guard is lifted for the module.
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with playwright_api.sync_playwright() as p:
            launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield launched
            launched.close()
    finally:
        if saved is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


@pytest.fixture
def expect():
    return pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def new_page(browser):
    """``open(language, width)``: a page in a fresh context, its CSP violations watched;
    the test fails if any page it opened met one."""
    ARTIFACTS.mkdir(exist_ok=True)
    opened: list[tuple[Any, list[dict[str, str]]]] = []

    def open_page(language: str = "en", width: int = 1440):
        context = browser.new_context(
            viewport={"width": width, "height": 900},
            locale=language,
            extra_http_headers={"Accept-Language": language},
        )
        opened.append((context, watch_csp(context)))
        return context.new_page()

    yield open_page
    for context, _violations in opened:
        for page in context.pages:
            if page.url.startswith("http"):
                assert_no_csp_violation(page)
        context.close()
    assert [v for _context, violations in opened for v in violations] == []


def log_in(page: Any, live_server: Any, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


@pytest.fixture
def staff_page(new_page, live_server, django_user_model, settings):
    """A logged-in superuser's page; ``open(language, width)`` starts a fresh context."""
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    settings.FAL_CALL_TIMEOUT_SECONDS = 3.0
    django_user_model.objects.create_superuser("staff", "staff@example.com", PASSWORD)

    def open_page(language: str = "en", width: int = 1440):
        page = new_page(language, width)
        log_in(page, live_server, "staff")
        return page

    return open_page
