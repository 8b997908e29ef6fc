"""The avatar admin as staff use it: the changelist, filters, search, the avatar page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from monitoring import transitions
from monitoring.admin.actions import AVATAR_ACTIONS
from monitoring.models import (
    Avatar,
    EventSource,
    Training,
    WebhookDelivery,
    WebhookOutcome,
    WebhookVerdict,
)
from notifications.models import Notification, NotificationAttempt, UnreachableChat

CHANGELIST = reverse("admin:monitoring_avatar_changelist")


def change_url(avatar) -> str:
    return reverse("admin:monitoring_avatar_change", args=[avatar.pk])


@pytest.fixture
def stuck_avatar(training_avatar):
    def make(request_id: str, reason: str = "in queue for 2 hours", **fields):
        avatar, training = training_avatar(request_id=request_id, **fields)
        transitions.flag_stuck(training, reason=reason)
        return avatar, training

    return make


def test_it_shows_status_badges_with_sub_state_and_queue_position(
    admin_client, training_avatar, make_avatar
):
    avatar, training = training_avatar(request_id="req-badge", name="Queued one")
    Training.objects.filter(pk=training.pk).update(queue_position=3)
    make_avatar(name="Waiting one")

    page = admin_client.get(CHANGELIST).content.decode()

    assert "status-training" in page
    assert "In queue, #3" in page
    assert "status-ready_for_training" in page
    assert "Ready for training" in page


def test_the_changelist_stays_a_handful_of_queries_for_a_full_page(
    admin_client, training_avatar, django_assert_max_num_queries
):
    for n in range(30):
        training_avatar(request_id=f"req-many-{n}", name=f"Avatar {n}")
    admin_client.get(CHANGELIST)  # warm the session and content types

    # The banner's checks included (fal's error rate, failing event callbacks).
    with django_assert_max_num_queries(14):
        response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    assert response.content.decode().count("status-badge") == 30


def test_the_stuck_filter_lists_only_stuck_avatars_with_their_reason(
    admin_client, stuck_avatar, training_avatar
):
    stuck_avatar("req-stuck", reason="no answer from fal for 20 minutes", name="Stuck one")
    training_avatar(request_id="req-fine", name="Fine one")

    page = admin_client.get(CHANGELIST + "?stuck=yes").content.decode()

    assert "Stuck one" in page
    assert "no answer from fal for 20 minutes" in page
    assert "Fine one" not in page


@pytest.mark.parametrize("url", [reverse("admin:index"), CHANGELIST])
def test_the_admin_index_and_the_avatar_list_link_to_the_stuck_list_and_the_dashboard(
    admin_client, url
):
    page = admin_client.get(url).content.decode()

    assert f'href="{CHANGELIST}?stuck=yes"' in page
    assert reverse("admin:monitoring_dashboard") in page


@pytest.mark.parametrize("term", ["req-find-me", "777000111", "@findable", "findable", "Findme"])
def test_search_finds_an_avatar_by_name_request_id_telegram_id_or_username(
    admin_client, training_avatar, make_owner, term
):
    owner = make_owner(telegram_id=777000111, username="findable")
    training_avatar(request_id="req-find-me", owner=owner, name="Findme")
    training_avatar(request_id="req-other", name="Somebody else")

    page = admin_client.get(CHANGELIST, {"q": term}).content.decode()

    assert "Findme" in page
    assert "Somebody else" not in page


def test_the_training_type_and_notification_filters_narrow_the_list(admin_client, training_avatar):
    portrait, training = training_avatar(request_id="req-p", name="Portrait sent")
    training_avatar(request_id="req-s", name="Style none", training_type="style")
    transitions.complete(
        training, lora_url="https://v3.fal.media/l.safetensors", source=EventSource.CHECK
    )
    Notification.objects.filter(training=training).update(status="sent")

    by_type = admin_client.get(CHANGELIST, {"training_type__exact": "style"}).content.decode()
    sent = admin_client.get(CHANGELIST, {"notification": "sent"}).content.decode()
    none = admin_client.get(CHANGELIST, {"notification": "none"}).content.decode()

    assert "Style none" in by_type and "Portrait sent" not in by_type
    assert "Portrait sent" in sent and "Style none" not in sent
    assert "Style none" in none and "Portrait sent" not in none


def test_the_avatar_page_shows_timeline_deliveries_notification_attempts_result_and_logs(
    admin_client, training_avatar
):
    avatar, training = training_avatar(request_id="req-page")
    Training.objects.filter(pk=training.pk).update(logs_tail="step 2400/2500 loss=0.031")
    training.refresh_from_db()
    transitions.complete(
        training,
        lora_url="https://v3.fal.media/files/lora.safetensors",
        result={"diffusers_lora_file": {"url": "https://v3.fal.media/files/lora.safetensors"}},
        source=EventSource.WEBHOOK,
    )
    WebhookDelivery.objects.create(
        request_id="req-page",
        verdict=WebhookVerdict.VALID,
        outcome=WebhookOutcome.APPLIED,
        fal_status="OK",
        training=training,
    )
    notification = Notification.objects.get(training=training)
    NotificationAttempt.objects.create(
        notification=notification,
        outcome=NotificationAttempt.Outcome.TRANSIENT,
        error="TimedOut: read timeout",
        chat_id=avatar.owner.telegram_id,
    )

    page = admin_client.get(change_url(avatar)).content.decode()

    assert "Timeline" in page and "Submitted to fal" in page and "Status changed" in page
    assert "Exact replay" not in page and "Applied" in page  # the delivery's outcome
    assert "TimedOut: read timeout" in page
    assert "diffusers_lora_file" in page
    assert "step 2400/2500 loss=0.031" in page
    # Status only moves through actions: no form field for it.
    assert 'name="status"' not in page


def test_the_training_page_shows_its_webhook_deliveries_inline(admin_client, training_avatar):
    avatar, training = training_avatar(request_id="req-inline")
    WebhookDelivery.objects.create(
        request_id="req-inline",
        verdict=WebhookVerdict.BAD_SIGNATURE,
        outcome=WebhookOutcome.REJECTED,
        training=training,
    )

    page = admin_client.get(
        reverse("admin:monitoring_training_change", args=[training.pk])
    ).content.decode()

    assert "Bad signature" in page
    assert "req-inline" in page


def test_the_owner_list_shows_reachability_and_the_last_delivery_error(
    admin_client, training_avatar, make_owner
):
    owner = make_owner(username="blocked_user")
    UnreachableChat.objects.create(
        chat_id=owner.telegram_id, reason="Forbidden: bot was blocked by the user"
    )
    avatar, training = training_avatar(request_id="req-owner", owner=owner)
    transitions.fail(training, error_message="bad photos", source=EventSource.CHECK)
    NotificationAttempt.objects.create(
        notification=Notification.objects.get(training=training),
        outcome=NotificationAttempt.Outcome.UNREACHABLE,
        error="Forbidden: bot was blocked by the user",
    )

    page = admin_client.get(reverse("admin:monitoring_owner_changelist")).content.decode()

    assert "blocked_user" in page
    # Telegram's reason in the reader's words, both as the reason and as the last error.
    assert page.count("the owner blocked the bot") >= 2
    assert "Forbidden: bot was blocked" not in page


def test_every_staff_action_is_offered_on_the_changelist(admin_client, make_avatar):
    make_avatar()
    page = admin_client.get(CHANGELIST).content.decode()

    for action in AVATAR_ACTIONS:
        assert f'value="{action.__name__}"' in page, action.__name__


def test_clearing_the_stuck_flag_reports_per_avatar(admin_client, stuck_avatar, make_avatar):
    avatar, training = stuck_avatar("req-clear")
    idle = make_avatar(name="Idle")

    response = admin_client.post(
        CHANGELIST,
        {"action": "clear_stuck", "_selected_action": [avatar.pk, idle.pk], "index": 0},
        follow=True,
    )

    training.refresh_from_db()
    assert training.stuck_since is None
    messages = [str(m) for m in response.context["messages"]]
    assert any("stuck flag cleared" in m and f"#{avatar.pk}" in m for m in messages)
    assert any("no active training" in m and f"#{idle.pk}" in m for m in messages)


def test_extending_the_deadline_asks_for_hours_then_clears_the_flag_until_then(
    admin_client, stuck_avatar
):
    avatar, training = stuck_avatar("req-extend")

    ask = admin_client.post(
        CHANGELIST, {"action": "extend_deadline", "_selected_action": [avatar.pk], "index": 0}
    )
    assert ask.status_code == 200 and 'name="hours"' in ask.content.decode()
    training.refresh_from_db()
    assert training.stuck_since is not None  # nothing happened before confirming

    bad = admin_client.post(
        CHANGELIST,
        {
            "action": "extend_deadline",
            "_selected_action": [avatar.pk],
            "confirmed": "yes",
            "hours": "0",
        },
    )
    assert bad.status_code == 200 and "errorlist" in bad.content.decode()

    admin_client.post(
        CHANGELIST,
        {
            "action": "extend_deadline",
            "_selected_action": [avatar.pk],
            "confirmed": "yes",
            "hours": "4",
        },
    )
    training.refresh_from_db()
    assert training.stuck_since is None
    expected = timezone.now() + timedelta(hours=4)
    assert abs((training.stuck_deadline_extended_until - expected).total_seconds()) < 60


def test_mark_failed_without_a_reason_changes_nothing(admin_client, training_avatar):
    avatar, training = training_avatar(request_id="req-noreason")

    page = admin_client.post(
        CHANGELIST,
        {
            "action": "mark_failed",
            "_selected_action": [avatar.pk],
            "confirmed": "yes",
            "reason": "",
        },
    ).content.decode()

    avatar.refresh_from_db()
    assert avatar.status == "training"
    assert "This field is required" in page


def test_the_sub_state_submitting_shows_without_queue_position(admin_client, make_avatar):
    avatar = make_avatar(name="Sending now")
    transitions.begin_training(
        avatar,
        endpoint="fal-ai/flux-lora-portrait-trainer",
        arguments={},
        webhook_url="",
        source=EventSource.STAFF,
    )

    page = admin_client.get(CHANGELIST).content.decode()

    assert "Training · Submitting" in page
    assert "#None" not in page


def test_an_avatar_added_by_staff_is_ready_for_training_with_its_created_event(admin_client, owner):
    response = admin_client.post(
        reverse("admin:monitoring_avatar_add"),
        {
            "owner": owner.pk,
            "name": "From the admin",
            "training_type": "style",
            "trigger_word": "ohwx style",
            "images_url": "https://example.com/set.zip",
            "training_settings": "{}",
            "trainings-TOTAL_FORMS": 0,
            "trainings-INITIAL_FORMS": 0,
            "events-TOTAL_FORMS": 0,
            "events-INITIAL_FORMS": 0,
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    avatar = Avatar.objects.get(name="From the admin")
    assert avatar.status == "ready_for_training"
    event = avatar.events.get()
    assert event.kind == "created" and event.source == "staff" and event.actor is not None
