"""An owner who blocked the bot and comes back is messaged again, and what they missed is
resent once; "not delivered" means the same on the banner, the dashboard and the list."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, User
from django.urls import reverse

from monitoring import roles, transitions
from monitoring.models import EventSource
from monitoring.ops import attention, dashboard
from notifications.models import Notification, NotificationStatus, UnreachableChat
from tests.api_support import give, run_check
from tests.support import complete_training

pytestmark = pytest.mark.django_db(transaction=True)

AVATARS = reverse("admin:monitoring_avatar_changelist")
UNREACHABLE = reverse("admin:notifications_unreachablechat_changelist")
NOTIFICATIONS = reverse("admin:notifications_notification_changelist")


@pytest.fixture
def sara_blocked_the_bot(telegram, training_avatar, make_owner, run_deliveries):
    """Sara's first avatar completed while she had blocked the bot: its message is held."""
    sara = make_owner(telegram_id=730001, username="sara_23", language="en")
    first, training = training_avatar("req-sara-1", owner=sara, name="Sara at the sea")
    telegram.script(sara.telegram_id, telegram.blocked())
    complete_training(training)
    run_deliveries()
    held = Notification.objects.get(training=training)
    assert held.status == NotificationStatus.UNREACHABLE
    assert UnreachableChat.objects.filter(chat_id=sara.telegram_id).exists()
    return sara, first, held


def test_an_owner_the_bot_starts_a_training_for_gets_the_held_message_and_the_next_one(
    sara_blocked_the_bot, fal, bot, make_avatar, telegram, run_deliveries
):
    sara, first, held = sara_blocked_the_bot
    second = make_avatar(owner=sara, name="Sara in the city", ready=False)
    give(second, bot)

    started = bot.post(f"/api/v1/avatars/{second.pk}/trainings", key="sara-2")
    assert started.status_code == 201, started.content
    run_deliveries()

    assert not UnreachableChat.objects.filter(chat_id=sara.telegram_id).exists()
    [resent] = telegram.messages_to(sara.telegram_id)
    assert "Sara at the sea" in resent.text
    held.refresh_from_db()
    assert held.status == NotificationStatus.SENT

    run_check()  # the emulator finishes the second training
    run_deliveries()
    texts = [m.text for m in telegram.messages_to(sara.telegram_id)]
    assert len(texts) == 2 and "Sara in the city" in texts[1]


def test_support_records_that_an_owner_is_reachable_again_and_the_message_goes_once(
    sara_blocked_the_bot, client, telegram, run_deliveries
):
    sara, first, held = sara_blocked_the_bot
    support = User.objects.create_user("support", password="x", is_staff=True)
    support.groups.add(Group.objects.get(name=roles.SUPPORT))
    client.force_login(support)
    chat = UnreachableChat.objects.get(chat_id=sara.telegram_id)
    listing = client.get(UNREACHABLE).content.decode()
    assert "the owner blocked the bot" in listing  # Telegram's reason, in words

    # The avatar page says why its message waits and where to say the owner is back.
    avatar_page = client.get(
        reverse("admin:monitoring_avatar_change", args=[first.pk])
    ).content.decode()
    assert f'href="{UNREACHABLE}?q={sara.telegram_id}" id="owner-unreachable"' in avatar_page

    form = {"action": "reachable_again", "_selected_action": [chat.pk], "index": 0}
    question = client.post(UNREACHABLE, form)
    assert question.status_code == 200 and b"reachable again" in question.content
    assert UnreachableChat.objects.filter(pk=chat.pk).exists()  # asked first, nothing done

    done = client.post(UNREACHABLE, {**form, "confirmed": "yes"}, follow=True)
    assert "1 held message queued again" in done.content.decode()
    run_deliveries()
    assert [m.text for m in telegram.messages_to(sara.telegram_id)][0].count("Sara at the sea")
    assert LogEntry.objects.filter(user=support, change_message__contains="reachable again")

    # A second "came back" (the bot starts another training) sends nothing again.
    from notifications import reachability

    assert reachability.reachable_again(sara.telegram_id, why="again") == []
    run_deliveries()
    assert len(telegram.messages_to(sara.telegram_id)) == 1


def test_a_held_message_is_resent_from_the_notification_list_only_once_the_owner_is_back(
    sara_blocked_the_bot, admin_client
):
    sara, first, held = sara_blocked_the_bot
    form = {"action": "resend", "_selected_action": [held.pk], "index": 0}
    page = admin_client.post(NOTIFICATIONS, form).content.decode()
    assert "still marked unreachable" in page

    UnreachableChat.objects.filter(chat_id=sara.telegram_id).delete()
    admin_client.post(NOTIFICATIONS, {**form, "confirmed": "yes"})
    held.refresh_from_db()
    assert held.status == NotificationStatus.PENDING


def test_the_banner_the_dashboard_and_the_filter_count_the_same_undelivered_messages(
    admin_client, telegram, training_avatar, run_deliveries, make_owner
):
    made: list = []

    def finished(request_id: str, status: str):
        avatar, training = training_avatar(
            request_id, owner=make_owner(telegram_id=730100 + len(made))
        )
        made.append(avatar)
        complete_training(training)
        Notification.objects.filter(training=training).update(status=status)
        return avatar, training

    failed, _t = finished("req-failed", NotificationStatus.FAILED)
    given_up, _t = finished("req-given-up", NotificationStatus.GIVEN_UP)
    unreachable, _t = finished("req-unreachable", NotificationStatus.UNREACHABLE)
    finished("req-sent", NotificationStatus.SENT)
    # Superseded: the avatar failed and was retrained since, so that message is no news.
    retrained, old = training_avatar("req-retrained", owner=make_owner(telegram_id=730999))
    transitions.fail(old, error_message="bad photos", source=EventSource.CHECK)
    Notification.objects.filter(training=old).update(status=NotificationStatus.GIVEN_UP)
    transitions.retrain(retrained, source=EventSource.COMMAND)
    transitions.begin_training(
        retrained, endpoint=old.endpoint, arguments={}, webhook_url="", source=EventSource.COMMAND
    )
    # Staff alerts are not owner messages.
    Notification.objects.filter(audience="staff").update(status=NotificationStatus.GIVEN_UP)

    [problem] = [p for p in attention.problems() if p.code == "notifications_failed"]
    assert problem.text.startswith("3 owners were not told")
    assert dashboard.notification_backlog(dashboard.timezone.now())["problems"] == 3
    listed = admin_client.get(problem.url)
    assert {a.pk for a in listed.context["cl"].result_list} == {
        failed.pk,
        given_up.pk,
        unreachable.pk,
    }
