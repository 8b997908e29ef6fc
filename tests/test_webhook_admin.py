"""Staff see every delivery, read-only, and can re-process the ones worth another try."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User

from fakes.fal_signing import delivery_body, lora_payload
from monitoring.models import (
    AvatarStatus,
    Training,
    WebhookDelivery,
    WebhookVerdict,
)
from tests.support import WEBHOOK_URL as URL

CHANGELIST = "/admin/monitoring/webhookdelivery/"


@pytest.fixture
def deliveries(fal, client, training_avatar):
    """One applied, one unmatched, one refused (bad signature): what staff usually see."""
    avatar, training = training_avatar("req-admin-ok")
    for rid in ("req-admin-ok", "req-admin-nobody"):
        body = delivery_body(rid, payload=lora_payload(rid))
        client.post(
            URL, data=body, content_type="application/json", headers=fal.signer.headers(body, rid)
        )
    forged = delivery_body("req-admin-ok", payload=lora_payload("evil"))
    client.post(
        URL,
        data=forged,
        content_type="application/json",
        headers={
            **fal.signer.headers(b"something else", "req-admin-ok"),
        },
    )
    return {
        d.outcome if d.verdict == WebhookVerdict.VALID else d.verdict: d
        for d in WebhookDelivery.objects.all()
    }


def _rows(response) -> list[int]:
    return sorted(obj.pk for obj in response.context["cl"].result_list)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["applied", "unmatched", "bad_signature"]),
        ("?verdict__exact=valid", ["applied", "unmatched"]),
        ("?verdict__exact=bad_signature", ["bad_signature"]),
        ("?outcome__exact=unmatched", ["unmatched"]),
        ("?matched=yes", ["applied"]),
        ("?matched=no", ["unmatched", "bad_signature"]),
        ("?q=req-admin-nobody", ["unmatched"]),
    ],
)
def test_the_delivery_list_filters_by_verdict_outcome_and_match(
    admin_client, deliveries, query, expected
):
    response = admin_client.get(CHANGELIST + query)

    assert response.status_code == 200
    assert _rows(response) == sorted(deliveries[name].pk for name in expected)


def test_a_delivery_page_is_read_only_and_shows_what_was_received(admin_client, deliveries):
    delivery = deliveries["applied"]

    page = admin_client.get(f"{CHANGELIST}{delivery.pk}/change/")

    assert page.status_code == 200
    content = page.content.decode()
    assert "req-admin-ok" in content and "pytorch_lora_weights" in content
    assert 'name="_save"' not in content
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    before = WebhookDelivery.objects.get(pk=delivery.pk).body
    admin_client.post(f"{CHANGELIST}{delivery.pk}/change/", {"body": "edited"})
    assert WebhookDelivery.objects.get(pk=delivery.pk).body == before


def _reprocess(client, ids, *, confirmed: bool):
    data = {"action": "reprocess", "_selected_action": ids}
    if confirmed:
        data["confirmed"] = "yes"
    return client.post(CHANGELIST, data, follow=True)


def _outcomes() -> dict[int, str]:
    return dict(WebhookDelivery.objects.values_list("pk", "outcome"))


def test_reprocessing_shows_what_will_and_will_not_be_reprocessed_and_changes_nothing_first(
    admin_client, deliveries, training_avatar
):
    avatar, _ = training_avatar("req-admin-nobody")
    ids = [deliveries[name].pk for name in ("unmatched", "applied", "bad_signature")]
    before = _outcomes()

    page = _reprocess(admin_client, ids, confirmed=False)

    assert page.status_code == 200
    content = page.content.decode()
    affected = content[content.index('id="affected"') : content.index('id="unaffected"')]
    unaffected = content[
        content.index('id="unaffected"') : content.index("</ul>", content.index('id="unaffected"'))
    ]
    assert "req-admin-nobody" in affected and "No matching training" in affected
    assert "Will not be affected (2)" in content
    assert "a delivery that is “Applied” is not re-processed" in unaffected
    assert "only deliveries with a valid signature can be processed" in unaffected
    assert f"#{deliveries['bad_signature'].pk}" in unaffected
    assert 'name="confirmed" value="yes"' in content
    assert "destructive" not in content and "delete-button-bg" not in content  # not red
    assert _outcomes() == before
    avatar.refresh_from_db()
    assert avatar.status != AvatarStatus.COMPLETED


def test_reprocessing_an_unmatched_delivery_applies_it_once_confirmed(
    admin_client, deliveries, training_avatar
):
    avatar, _ = training_avatar("req-admin-nobody")

    page = _reprocess(admin_client, [deliveries["unmatched"].pk], confirmed=True)

    assert "Delivery req-admin-nobody re-processed: Applied" in page.content.decode()
    assert WebhookDelivery.objects.get(pk=deliveries["unmatched"].pk).outcome == "applied"
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED


def test_reprocessing_only_refused_or_applied_deliveries_has_nothing_to_confirm(
    admin_client, deliveries
):
    ids = [deliveries["bad_signature"].pk, deliveries["applied"].pk]
    before = _outcomes()

    page = _reprocess(admin_client, ids, confirmed=False)

    content = page.content.decode()
    assert 'id="nothing-to-do"' in content
    assert 'name="confirmed"' not in content
    assert _outcomes() == before


def test_a_confirmed_reprocess_still_refuses_forged_and_applied_deliveries_and_says_why(
    admin_client, deliveries
):
    ids = [deliveries["bad_signature"].pk, deliveries["applied"].pk]
    before = _outcomes()

    page = _reprocess(admin_client, ids, confirmed=True)

    content = page.content.decode()
    assert "only deliveries with a valid signature can be processed" in content
    assert "is not re-processed" in content
    assert _outcomes() == before


def test_staff_who_may_only_view_deliveries_cannot_reprocess(client, deliveries):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_webhookdelivery"))
    client.force_login(viewer)
    before = _outcomes()

    page = client.get(CHANGELIST)

    assert page.status_code == 200
    assert "reprocess" not in page.content.decode()
    # The menu's first step and a crafted confirmation: no page, nothing re-processed
    # (tests/test_admin_roles.py calls the action past the menu: PermissionDenied).
    for confirmed in (False, True):
        response = _reprocess(client, [deliveries["unmatched"].pk], confirmed=confirmed)
        assert "Will be affected" not in response.content.decode()
    assert _outcomes() == before


def test_the_training_page_lists_its_deliveries(admin_client, deliveries):
    training = Training.objects.get(fal_request_id="req-admin-ok")

    page = admin_client.get(f"/admin/monitoring/training/{training.pk}/change/")

    assert page.status_code == 200
    content = page.content.decode()
    assert f"{CHANGELIST}{deliveries['applied'].pk}/change/" in content
    # The forged delivery never matched a training, so it is not listed there.
    assert f"{CHANGELIST}{deliveries['bad_signature'].pk}/change/" not in content
