"""Every kind of admin page in a real browser, under the admin's Content-Security-Policy
(no inline script or style, avatarsite/csp.py): none may meet a violation. The listener
is the one every browser test uses (tests/browser.py)."""

from __future__ import annotations

import pytest

from fakes.fal_signing import delivery_body, lora_payload
from monitoring import transitions
from monitoring.models import EventSource, WebhookDelivery
from notifications.models import Notification
from tests.browser import assert_no_csp_violation, browser, expect, new_page, staff_page
from tests.support import WEBHOOK_URL

__all__ = ["browser", "expect", "new_page", "staff_page"]  # shared fixtures (tests/browser.py)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_no_admin_page_meets_a_csp_violation(
    staff_page, live_server, fal, client, training_avatar, expect
):
    stuck, training = training_avatar("req-csp-stuck", name="Stuck <b>one</b>")
    transitions.flag_stuck(training, reason="in fal's queue for a long time")
    done, finished = training_avatar("req-csp-done", name="Done")
    body = delivery_body("req-csp-done", payload=lora_payload("req-csp-done"))
    client.post(
        WEBHOOK_URL,
        data=body,
        content_type="application/json",
        headers=fal.signer.headers(body, "req-csp-done"),
    )
    transitions.complete(finished, lora_url="https://v3.fal.media/x", source=EventSource.CHECK)
    delivery = WebhookDelivery.objects.get(request_id="req-csp-done")
    notification = Notification.objects.filter(training=finished).first()
    assert notification is not None

    page = staff_page("en", 1440)
    admin = f"{live_server.url}/admin"
    pages = [
        ("index", "/"),
        ("avatar list", "/monitoring/avatar/"),
        ("stuck list", "/monitoring/avatar/?stuck=yes"),
        ("avatar page", f"/monitoring/avatar/{stuck.pk}/change/"),
        ("finished avatar page", f"/monitoring/avatar/{done.pk}/change/"),
        ("new avatar (autocomplete)", "/monitoring/avatar/add/"),
        ("dashboard", "/monitoring/avatar/dashboard/"),
        ("training", f"/monitoring/training/{training.pk}/change/"),
        ("events", "/monitoring/avatarevent/"),
        ("owners", "/monitoring/owner/"),
        ("owner", f"/monitoring/owner/{stuck.owner_id}/change/"),
        ("notifications", "/notifications/notification/"),
        ("notification", f"/notifications/notification/{notification.pk}/change/"),
        ("webhook deliveries", "/monitoring/webhookdelivery/"),
        ("webhook delivery", f"/monitoring/webhookdelivery/{delivery.pk}/change/"),
        ("adopt", "/monitoring/unknownfalrequest/adopt/"),
        ("task queue", "/django_q/ormq/"),
    ]
    for name, path in pages:
        answer = page.goto(f"{admin}{path}")
        assert answer is not None and answer.status == 200, name
        assert_no_csp_violation(page)

    # A confirmation page, started from the avatar page's button (Django's admin action).
    page.goto(f"{admin}/monitoring/avatar/{stuck.pk}/change/")
    page.click("#avatar-actions button[value=mark_failed]")
    expect(page.locator("#owner-previews")).to_be_visible()
    expect(page.locator("input.destructive")).to_be_visible()
    assert_no_csp_violation(page)
    # The red button is red from the stylesheet, not from a style attribute.
    red = page.locator("input.destructive").evaluate("el => getComputedStyle(el).backgroundColor")
    assert red not in ("", "rgba(0, 0, 0, 0)"), red
    page.click("a.cancel-link")
    expect(page).to_have_url(f"{admin}/monitoring/avatar/{stuck.pk}/change/")

    # The unavailable actions, disabled, each with its reason.
    page.goto(f"{admin}/monitoring/avatar/{done.pk}/change/")
    page.click("#unavailable-actions summary")
    expect(page.locator("#unavailable-actions button[value=cancel_on_fal]")).to_be_disabled()
    assert_no_csp_violation(page)
