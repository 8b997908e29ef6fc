"""The notifications admin: filters, attempts, resend with confirmation, the paused banner."""

from __future__ import annotations

import pytest
from django.urls import reverse

from monitoring import transitions
from monitoring.models import EventSource
from notifications.models import Notification, NotificationStatus, SenderState

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "admin:notifications_notification_changelist"


@pytest.fixture
def rows(telegram, training_avatar, run_deliveries):
    """One sent, one failed (rejected), one given up."""
    sent_avatar, sent = training_avatar(request_id="r1", name="Отправлен")
    failed_avatar, failed = training_avatar(request_id="r2", name="Отклонён")
    telegram.script(failed_avatar.owner.telegram_id, telegram.bad_request())
    for training in (sent, failed):
        transitions.complete(training, lora_url="https://v3.fal.media/l", source=EventSource.CHECK)
    _avatar, cancelled = training_avatar(request_id="r3", name="Брошен")
    transitions.cancel(cancelled, source=EventSource.STAFF)
    run_deliveries()
    given_up = Notification.objects.get(kind="cancelled")
    Notification.objects.filter(pk=given_up.pk).update(status=NotificationStatus.GIVEN_UP)
    return {
        "sent": Notification.objects.get(training=sent),
        "failed": Notification.objects.get(training=failed, kind="ready"),
        "given_up": Notification.objects.get(pk=given_up.pk),
    }


def test_it_lists_notifications_filtered_by_status_and_kind(admin_client, rows):
    page = admin_client.get(reverse(CHANGELIST), {"status__exact": "failed"})
    assert page.status_code == 200
    listed = {row.pk for row in page.context["cl"].result_list}
    assert listed == {rows["failed"].pk}

    page = admin_client.get(reverse(CHANGELIST), {"kind__exact": "cancelled"})
    assert {row.pk for row in page.context["cl"].result_list} == {rows["given_up"].pk}


def test_the_notification_page_shows_every_attempt_with_its_error(admin_client, rows, telegram):
    page = admin_client.get(
        reverse("admin:notifications_notification_change", args=[rows["failed"].pk])
    )
    body = page.content.decode()
    assert page.status_code == 200
    assert "Rejected as bad request" in body
    assert "parse entities" in body
    assert telegram.token not in body


def test_resend_asks_for_confirmation_then_resends_only_failed_or_given_up_rows(
    admin_client, rows, telegram, run_deliveries
):
    selected = [rows["sent"].pk, rows["failed"].pk, rows["given_up"].pk]
    confirm = admin_client.post(
        reverse(CHANGELIST), {"action": "resend", "_selected_action": selected}
    )
    assert confirm.status_code == 200
    body = confirm.content.decode()
    assert "Yes, resend" in body
    assert f"#{rows['failed'].pk}" in body and f"#{rows['given_up'].pk}" in body
    assert f"#{rows['sent'].pk} " not in body
    assert Notification.objects.get(pk=rows["failed"].pk).status == NotificationStatus.FAILED

    done = admin_client.post(
        reverse(CHANGELIST),
        {"action": "resend", "_selected_action": selected, "confirm": "yes"},
        follow=True,
    )
    assert "2 notifications queued to be sent again." in done.content.decode()
    run_deliveries()

    statuses = dict(Notification.objects.filter(pk__in=selected).values_list("pk", "status"))
    assert statuses[rows["failed"].pk] == NotificationStatus.SENT
    assert statuses[rows["sent"].pk] == NotificationStatus.SENT
    assert len(telegram.messages_to(rows["sent"].chat_id)) == 1  # not sent twice


def test_it_shows_a_banner_while_sending_is_paused(admin_client, db):
    SenderState.objects.create(pk=1, paused=True, reason="Unauthorized")

    page = admin_client.get(reverse(CHANGELIST))

    assert "Sending to Telegram is paused" in page.content.decode()


def test_there_is_no_banner_while_sending_works(admin_client, db):
    page = admin_client.get(reverse(CHANGELIST))
    assert "Sending to Telegram is paused" not in page.content.decode()
