"""The notifications admin: filters, attempts, resend with confirmation, the paused banner."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
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


def _section(page: str, element_id: str) -> str:
    start = page.index(f'id="{element_id}"')
    return page[start : page.index("</ul>", start)]


def test_resend_lists_what_will_and_will_not_be_resent_and_why_before_resending_anything(
    admin_client, rows, telegram
):
    selected = [rows["sent"].pk, rows["failed"].pk, rows["given_up"].pk]

    confirm = admin_client.post(
        reverse(CHANGELIST), {"action": "resend", "_selected_action": selected}
    )

    assert confirm.status_code == 200
    body = confirm.content.decode()
    affected, unaffected = _section(body, "affected"), _section(body, "unaffected")
    assert f"(#{rows['failed'].pk})" in affected and f"(#{rows['given_up'].pk})" in affected
    assert f"(#{rows['sent'].pk})" not in affected
    assert f"(#{rows['sent'].pk})" in unaffected
    assert "it is “Sent”; only undelivered messages are resent." in unaffected
    assert "Отправлен" in unaffected  # the avatar's name, in <bdi>
    # Not red: resending is not destructive.
    assert "Yes, I’m sure" in body and "destructive" not in body
    assert "delete-button-bg" not in body
    assert Notification.objects.get(pk=rows["failed"].pk).status == NotificationStatus.FAILED
    assert Notification.objects.get(pk=rows["given_up"].pk).status == NotificationStatus.GIVEN_UP
    assert len(telegram.messages_to(rows["sent"].chat_id)) == 1


def test_resend_of_sent_messages_only_has_nothing_to_confirm(admin_client, rows):
    page = admin_client.post(
        reverse(CHANGELIST), {"action": "resend", "_selected_action": [rows["sent"].pk]}
    ).content.decode()

    assert 'id="nothing-to-do"' in page and 'name="confirmed"' not in page


def test_a_confirmed_resend_resends_only_failed_or_given_up_rows(
    admin_client, rows, telegram, run_deliveries
):
    selected = [rows["sent"].pk, rows["failed"].pk, rows["given_up"].pk]

    done = admin_client.post(
        reverse(CHANGELIST),
        {"action": "resend", "_selected_action": selected, "confirmed": "yes"},
        follow=True,
    )

    content = done.content.decode()
    assert "2 notifications queued to be sent again." in content
    assert "1 selected notification could not be resent: left alone." in content
    run_deliveries()
    statuses = dict(Notification.objects.filter(pk__in=selected).values_list("pk", "status"))
    assert statuses[rows["failed"].pk] == NotificationStatus.SENT
    assert statuses[rows["sent"].pk] == NotificationStatus.SENT
    assert len(telegram.messages_to(rows["sent"].chat_id)) == 1  # not sent twice
    logged = LogEntry.objects.filter(change_message__startswith="resend")
    assert sorted(int(e.object_id) for e in logged) == sorted(
        [rows["failed"].pk, rows["given_up"].pk]
    )


def test_a_crafted_confirmed_resend_without_the_permission_resends_nothing(client, rows, telegram):
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_notification"))
    client.force_login(viewer)
    before = list(Notification.objects.order_by("pk").values_list("pk", "status", "attempts"))

    # Not offered, so Django does not dispatch it; past the menu the action itself
    # refuses (PermissionDenied: tests/test_admin_roles.py, for every action).
    listed = client.post(
        reverse(CHANGELIST),
        {"action": "resend", "_selected_action": [rows["failed"].pk], "confirmed": "yes"},
        follow=True,
    )

    assert "queued to be sent again" not in listed.content.decode()
    after = list(Notification.objects.order_by("pk").values_list("pk", "status", "attempts"))
    assert after == before


def test_no_add_change_or_delete_is_offered_on_the_notification_pages(admin_client, rows):
    notification = rows["failed"]
    add = reverse("admin:notifications_notification_add")
    changelist = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert add not in changelist and "delete_selected" not in changelist
    url = reverse("admin:notifications_notification_change", args=[notification.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="_save"' not in page and "deletelink" not in page
    assert admin_client.get(add).status_code == 403
    delete = reverse("admin:notifications_notification_delete", args=[notification.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Notification.objects.filter(pk=notification.pk).exists()


def test_it_shows_a_banner_while_sending_is_paused(admin_client, db):
    SenderState.objects.create(pk=1, paused=True, reason="Unauthorized")

    page = admin_client.get(reverse(CHANGELIST))

    assert "Sending to Telegram is paused" in page.content.decode()


def test_there_is_no_banner_while_sending_works(admin_client, db):
    page = admin_client.get(reverse(CHANGELIST))
    assert "Sending to Telegram is paused" not in page.content.decode()
