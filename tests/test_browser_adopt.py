"""Adopting a fal request in a real browser, from the avatar list: Django's form layout,
the endpoint pre-selected by fal, the whole request id visible, one error."""

from __future__ import annotations

import re

import pytest

from monitoring.fal import payloads
from monitoring.models import Training
from tests.browser import ARTIFACTS, browser, expect, new_page, staff_page
from tests.fixtures_fal import submit_directly

__all__ = ["browser", "expect", "new_page", "staff_page"]  # shared fixtures (tests/browser.py)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STYLE = payloads.ENDPOINTS["style"]
FITS = "el => el.scrollWidth <= el.clientWidth"


@pytest.mark.parametrize("width", [1440, 390])
def test_an_operator_adopts_a_request_from_the_avatar_list(
    fal, staff_page, live_server, expect, width
):
    request_id = submit_directly(fal, STYLE, {"images_data_url": "https://x/adopt.zip"})
    page = staff_page("en", width)
    page.goto(f"{live_server.url}/admin/monitoring/avatar/")
    page.click("#adopt-button")
    expect(page.locator("h1")).to_have_text("Adopt a fal request")

    # A wrong id first: one error, said once.
    page.fill("#id_request_id", "not-a-request-1234")
    page.select_option("#id_endpoint", STYLE)
    page.fill("#id_owner_telegram_id", "562")
    page.fill("#id_name", "Adopted in the browser")
    page.click("input[type=submit][value=Adopt]")
    expect(page.locator("body")).to_contain_text("neither fal's queue nor its record")
    assert page.get_by_text(re.compile("neither fal's queue")).count() == 1

    # The page with the request id in its link: fal tells the endpoint.
    page.goto(
        f"{live_server.url}/admin/monitoring/unknownfalrequest/adopt/?request_id={request_id}"
    )
    expect(page.locator("#id_endpoint")).to_have_value(STYLE)
    expect(page.locator(".form-row.field-request_id")).to_be_visible()  # Django's rows
    assert page.locator("#id_request_id").evaluate(FITS)  # the whole id is visible
    page.screenshot(path=str(ARTIFACTS / f"adopt-form-{width}.png"), full_page=True)
    page.fill("#id_owner_telegram_id", "562")
    page.fill("#id_name", "Adopted in the browser")
    page.click("input[type=submit][value=Adopt]")
    expect(page.locator("ul.messagelist")).to_contain_text("is now followed as avatar")
    assert Training.objects.get(fal_request_id=request_id).endpoint == STYLE
