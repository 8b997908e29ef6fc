"""What needs attention, at a glance, and who may act on it: counts, ordering, the stuck
list, the problems banner, the dashboard verdict, the avatar page's buttons and their
permission checks, and the audit trail nobody can add to, edit or delete."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from monitoring import transitions
from monitoring.models import (
    AvatarEvent,
    CheckRun,
    EventSource,
    Training,
    WebhookDelivery,
    WebhookVerdict,
)
from notifications.models import Notification
from tests.support import run_queued_monitoring_tasks

CHANGELIST = reverse("admin:monitoring_avatar_changelist")
DASHBOARD = reverse("admin:monitoring_dashboard")


def change_url(avatar) -> str:
    return reverse("admin:monitoring_avatar_change", args=[avatar.pk])


def enabled_buttons(page: str) -> set[str]:
    """The avatar page's buttons that post an action (disabled ones are listed apart)."""
    return set(re.findall(r'<button type="submit" value="(\w+)"', page))


def disabled_buttons(page: str) -> dict[str, str]:
    """Each disabled button of the avatar page, with the reason shown beside it."""
    return dict(
        re.findall(r'value="(\w+)" disabled[^>]*>[^<]*</button> <span[^>]*>([^<]*)</span>', page)
    )


@pytest.fixture
def all_is_well(settings, db):
    settings.TELEGRAM_STAFF_CHAT_ID = -100500
    CheckRun.objects.create(started_at=timezone.now(), duration_seconds=0.1, due=0, checked=0)


@pytest.fixture
def stuck(training_avatar):
    def make(request_id: str, minutes_ago: int, **fields):
        avatar, training = training_avatar(request_id=request_id, **fields)
        transitions.flag_stuck(training, reason="in fal's queue for a while")
        Training.objects.filter(pk=training.pk).update(
            stuck_since=timezone.now() - timedelta(minutes=minutes_ago)
        )
        return avatar, training

    return make


@pytest.fixture
def support_client(client, django_user_model):
    """A staff member who may only view avatars (no action permissions)."""
    user = django_user_model.objects.create_user("support", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="monitoring", codename__in=["view_avatar", "view_owner"]
        )
    )
    client.force_login(user)
    return client


def names_in_order(response) -> list[str]:
    return [avatar.name for avatar in response.context["cl"].result_list]


def test_stuck_and_active_avatars_come_first_and_the_stuck_list_sorts_by_time_stuck(
    admin_client, make_avatar, training_avatar, stuck
):
    make_avatar(name="Idle old")
    stuck("req-a", 5, name="Stuck 5 min")
    training_avatar("req-b", name="Training fine")
    stuck("req-c", 50, name="Stuck 50 min")
    make_avatar(name="Idle new")

    everything = admin_client.get(CHANGELIST)
    # Stuck first (newest first among them), then training, then the rest.
    assert names_in_order(everything) == [
        "Stuck 50 min",
        "Stuck 5 min",
        "Training fine",
        "Idle new",
        "Idle old",
    ]

    stuck_list = admin_client.get(CHANGELIST + "?stuck=yes")
    assert names_in_order(stuck_list) == ["Stuck 50 min", "Stuck 5 min"]
    page = stuck_list.content.decode()
    assert "<title>Stuck trainings (2)" in page
    assert "Stuck (2)" in page and "Training (3)" in page


def test_an_empty_stuck_list_says_nothing_is_stuck(admin_client, make_avatar):
    make_avatar()
    page = admin_client.get(CHANGELIST + "?stuck=yes").content.decode()
    assert "Nothing is stuck right now" in page
    assert "Stuck trainings (0)" in page


def test_the_index_shows_the_stuck_count(admin_client, stuck):
    stuck("req-index", 3)
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert '<td id="stuck-count" class="alarm">1</td>' in page


def test_the_banner_lists_problems_only_for_users_who_may_view_avatars(
    admin_client, client, django_user_model, stuck, settings
):
    settings.TELEGRAM_STAFF_CHAT_ID = None
    stuck("req-banner", 3)
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert 'id="problems-banner"' in page
    for code in ("stuck", "check_late", "staff_chat_missing"):
        assert f'data-problem="{code}"' in page, code

    outsider = django_user_model.objects.create_user("outsider", password="x", is_staff=True)
    client.force_login(outsider)
    assert 'id="problems-banner"' not in client.get(reverse("admin:index")).content.decode()


def test_fal_account_trouble_and_undelivered_messages_are_problems(
    admin_client, all_is_well, training_avatar
):
    from notifications import outbox

    outbox.queue_fal_account_alert(status_code=403, detail="User is locked. Reason: balance")
    avatar, training = training_avatar("req-undelivered")
    transitions.complete(training, lora_url="https://v3.fal.media/x", source=EventSource.CHECK)
    Notification.objects.filter(training=training).update(status="given_up")

    page = admin_client.get(DASHBOARD).content.decode()
    assert 'data-problem="fal_account"' in page and "fal locked the account" in page
    assert 'data-problem="notifications_failed"' in page
    assert "<title>Dashboard: 2 problems" in page


def test_the_dashboard_says_all_good_when_nothing_is_wrong(admin_client, all_is_well):
    page = admin_client.get(DASHBOARD).content.decode()
    assert "<title>Dashboard: All good" in page
    assert 'id="problems-banner"' not in page
    assert 'http-equiv="refresh"' not in page  # off in tests (ADMIN_REFRESH_SECONDS=0)


def test_the_dashboard_and_stuck_list_refresh_themselves_when_configured(
    admin_client, all_is_well, settings
):
    settings.ADMIN_REFRESH_SECONDS = 30
    for url in (DASHBOARD, CHANGELIST + "?stuck=yes"):
        assert '<meta http-equiv="refresh" content="30">' in admin_client.get(url).content.decode()


def test_the_avatar_page_offers_what_state_and_permissions_allow(
    admin_client, support_client, training_avatar, make_avatar
):
    avatar, _training = training_avatar("req-buttons")
    page = admin_client.get(change_url(avatar)).content.decode()
    assert enabled_buttons(page) == {"recheck_now", "cancel_on_fal", "mark_failed"}
    # The others are there, disabled, each with its precondition's reason.
    why = disabled_buttons(page)
    assert "only failed or cancelled avatars are retrained" in why["retrain"]
    assert why["extend_deadline"] == "it is not stuck."

    ready = make_avatar(name="Ready one")
    ready_page = admin_client.get(change_url(ready)).content.decode()
    assert enabled_buttons(ready_page) == {"start_training"}
    assert "no active training" in disabled_buttons(ready_page)["cancel_on_fal"]

    # Viewing only: the summary, no buttons.
    viewer = support_client.get(change_url(avatar)).content.decode()
    assert 'id="avatar-summary"' in viewer and 'id="avatar-actions"' not in viewer


def test_an_action_without_its_permission_is_refused_where_it_runs(
    support_client, training_avatar, fal
):
    avatar, training = training_avatar("req-forbidden")
    # As the avatar page's button posts it (Django offers it only to staff who may).
    response = support_client.post(
        CHANGELIST,
        {
            "_selected_action": avatar.pk,
            "action": "cancel_on_fal",
            "confirmed": "yes",
            "from_avatar_page": "1",
        },
        follow=True,
    )
    # Django offers this user no action: the list is shown again, nothing ran.
    assert response.templates[0].name == "admin/monitoring/avatar/change_list.html"
    training.refresh_from_db()
    assert training.cancel_requested_at is None
    assert fal.cancel_calls[training.fal_request_id] == 0


def test_the_confirmation_page_says_who_is_not_affected_and_why_before_anything_is_typed(
    admin_client, training_avatar, make_avatar
):
    avatar, _training = training_avatar("req-confirm")
    idle = make_avatar(name="Idle one")
    page = admin_client.post(
        CHANGELIST,
        {"action": "extend_deadline", "_selected_action": [avatar.pk, idle.pk], "index": 0},
    ).content.decode()
    assert "Will not be affected (2)" in page
    assert "it is not stuck." in page and "no active training" in page
    assert 'name="hours"' not in page  # nothing to type: nothing would change

    start = admin_client.post(
        CHANGELIST, {"action": "start_training", "_selected_action": [idle.pk], "index": 0}
    ).content.decode()
    assert "Will be affected (1)" in start
    assert 'class="default"' in start  # not red: nothing destructive


@pytest.mark.parametrize("action", ["cancel_on_fal", "mark_failed"])
def test_only_actions_that_stop_a_training_have_a_red_button(admin_client, training_avatar, action):
    avatar, _training = training_avatar(f"req-red-{action}")

    page = admin_client.post(
        CHANGELIST, {"action": action, "_selected_action": [avatar.pk], "index": 0}
    ).content.decode()

    assert "Will be affected (1)" in page
    assert 'class="default destructive"' in page


def test_webhook_deliveries_and_events_offer_no_add_change_or_delete_to_anyone(
    admin_client, training_avatar
):
    avatar, training = training_avatar("req-audit")
    delivery = WebhookDelivery.objects.create(
        request_id="req-audit",
        verdict=WebhookVerdict.VALID,
        headers={"x-fal-webhook-request-id": "req-audit"},
        body='{"request_id": "req-audit", "status": "OK", "payload": {"a": 1}}',
        training=training,
    )
    event = AvatarEvent.objects.filter(avatar=avatar).first()
    for model, obj in (("webhookdelivery", delivery), ("avatarevent", event)):
        add = reverse(f"admin:monitoring_{model}_add")
        changelist = admin_client.get(reverse(f"admin:monitoring_{model}_changelist"))
        assert "delete_selected" not in changelist.content.decode(), model
        assert add not in changelist.content.decode(), model
        assert admin_client.get(add).status_code == 403, model
        page = admin_client.get(reverse(f"admin:monitoring_{model}_change", args=[obj.pk]))
        assert "deletelink" not in page.content.decode(), model
        assert 'name="_save"' not in page.content.decode(), model
        delete = admin_client.post(reverse(f"admin:monitoring_{model}_delete", args=[obj.pk]))
        assert delete.status_code == 403, model
    assert WebhookDelivery.objects.filter(pk=delivery.pk).exists()

    page = admin_client.get(
        reverse("admin:monitoring_webhookdelivery_change", args=[delivery.pk])
    ).content.decode()
    assert "&quot;status&quot;: &quot;OK&quot;" in page and "\n  &quot;payload&quot;" in page


def test_a_notification_is_titled_by_what_it_is_and_shown_as_on_telegram(
    admin_client, training_avatar
):
    avatar, training = training_avatar("req-title", name="Anna <b>")
    transitions.complete(training, lora_url="https://v3.fal.media/x", source=EventSource.CHECK)
    notification = Notification.objects.get(training=training)

    page = admin_client.get(
        reverse("admin:notifications_notification_change", args=[notification.pk])
    ).content.decode()
    assert f"Avatar ready — {avatar.owner}, Anna &lt;b&gt;, avatar #{avatar.pk}" in page
    assert "<b>Anna &lt;b&gt;</b>" in page  # rendered markup, the name still escaped


def test_adding_an_avatar_picks_the_owner_by_autocomplete_and_view_site_is_the_dashboard(
    admin_client,
):
    page = admin_client.get(reverse("admin:monitoring_avatar_add")).content.decode()
    assert "admin-autocomplete" in page and 'name="owner"' in page
    assert f'href="{DASHBOARD}">View site' in page


def test_clearing_a_flag_whose_limit_is_still_passed_says_it_will_return(
    admin_client, stuck, settings
):
    avatar, training = stuck("req-clear-again", 3)
    Training.objects.filter(pk=training.pk).update(
        fal_status="IN_QUEUE", submitted_at=timezone.now() - timedelta(hours=3)
    )
    response = admin_client.post(
        CHANGELIST,
        {"action": "clear_stuck", "_selected_action": [avatar.pk], "index": 0},
        follow=True,
    )
    [message] = [str(m) for m in response.context["messages"]]
    assert "the next check flags it again" in message and "Extend the deadline" in message


def test_a_queued_staff_recheck_puts_fals_answer_on_the_timeline(
    admin_client, fal, make_avatar, settings
):
    from fakes.fal_emulator import FOREVER
    from monitoring.models import EventKind
    from monitoring.trainings import start_training

    settings.FAL_CALL_TIMEOUT_SECONDS = 3.0
    fal.drop_webhooks()
    fal.script(queue_seconds=FOREVER, queue_position=4)
    avatar = make_avatar(name="Waiting")
    training = start_training(avatar, source=EventSource.COMMAND).training

    admin_client.post(
        CHANGELIST, {"action": "recheck_now", "_selected_action": [avatar.pk], "index": 0}
    )
    run_queued_monitoring_tasks()

    note = AvatarEvent.objects.get(training=training, kind=EventKind.NOTE)
    assert note.message == "Checked by staff: fal says IN_QUEUE, position 4."
    assert note.actor is not None
    page = admin_client.get(change_url(avatar)).content.decode()
    assert "Checked by staff: fal says IN_QUEUE, position 4." in page


def test_stuck_reasons_are_worded_live_from_their_code(admin_client, training_avatar):
    from monitoring import stuck as stuck_rules
    from monitoring.models import EventKind

    avatar, training = training_avatar("req-live")
    Training.objects.filter(pk=training.pk).update(
        fal_status="IN_QUEUE", submitted_at=timezone.now() - timedelta(minutes=125)
    )
    training.refresh_from_db()
    assert stuck_rules.review([training], timezone.now()) == (1, 0)
    event = AvatarEvent.objects.get(training=training, kind=EventKind.STUCK)
    assert event.details["code"] == "in_queue" and event.details["limit_minutes"] == 60

    # Ten minutes later the list and the page say 135 min, not the stored "125 min".
    Training.objects.filter(pk=training.pk).update(
        submitted_at=timezone.now() - timedelta(minutes=135)
    )
    listed = admin_client.get(CHANGELIST + "?stuck=yes").content.decode()
    assert "in fal&#x27;s queue for 135 min; the limit is 60 min" in listed
    page = admin_client.get(change_url(avatar)).content.decode()
    assert "in fal&#x27;s queue for 135 min; the limit is 60 min" in page  # the summary
    assert "in fal&#x27;s queue for 125 min; the limit is 60 min" in page  # the timeline
