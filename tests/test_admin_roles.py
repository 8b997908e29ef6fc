"""Roles through the real admin: who is offered each action and page, who can run it.

Six people: a superuser, a member of Support, a member of Operators, a staff member
with view permissions only, a staff member with no permissions, and a non-staff user
(in Operators, to show that the group alone opens nothing). For every action a
crafted POST (the menu's first step, a confirmed one, and one with ``select_across``)
either does what it says, written to the admin log, or changes nothing at all: no
status, no event, no queued task, no message, no fal job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ

from fakes.fal_emulator import FOREVER
from fakes.fal_signing import delivery_body, lora_payload
from monitoring import roles, tasks, transitions
from monitoring.fal import signing_keys
from monitoring.models import (
    Avatar,
    AvatarEvent,
    EventSource,
    Training,
    WebhookDelivery,
    WebhookOutcome,
)
from monitoring.trainings import start_training
from notifications.models import Notification, NotificationStatus, UnreachableChat
from tests.support import WEBHOOK_URL

AVATARS = reverse("admin:monitoring_avatar_changelist")
DELIVERIES = reverse("admin:monitoring_webhookdelivery_changelist")
NOTIFICATIONS = reverse("admin:notifications_notification_changelist")
UNREACHABLE = reverse("admin:notifications_unreachablechat_changelist")
DASHBOARD = reverse("admin:monitoring_dashboard")
STUCK_LIST = AVATARS + "?stuck=yes"

ALL = frozenset(
    {
        roles.RECHECK_AVATAR,
        roles.START_TRAINING,
        roles.CANCEL_TRAINING,
        roles.FAIL_AVATAR,
        roles.MANAGE_STUCK,
        roles.RESEND_NOTIFICATION,
    }
)
SUPPORT = frozenset({roles.RECHECK_AVATAR, roles.MANAGE_STUCK, roles.RESEND_NOTIFICATION})
# What each person may do, and whether they may look at the monitor at all.
PEOPLE: dict[str, tuple[frozenset[str], bool]] = {
    "superuser": (ALL, True),
    "operator": (ALL, True),
    "support": (SUPPORT, True),
    "viewer": (frozenset(), True),
    "no_permissions": (frozenset(), False),
    "not_staff": (frozenset(), False),
}


@dataclass(frozen=True)
class Action:
    changelist: str
    name: str
    permission: str
    target: str  # which object of the world it is run on
    fields: dict[str, Any] = field(default_factory=dict)


ACTIONS = [
    Action(AVATARS, "recheck_now", roles.RECHECK_AVATAR, "running"),
    Action(AVATARS, "start_training", roles.START_TRAINING, "ready", {"confirmed": "yes"}),
    Action(AVATARS, "retrain", roles.START_TRAINING, "failed", {"confirmed": "yes"}),
    # Sends a start held for fal's balance now: a paid start.
    Action(AVATARS, "release_held", roles.START_TRAINING, "held", {"confirmed": "yes"}),
    Action(AVATARS, "cancel_on_fal", roles.CANCEL_TRAINING, "running", {"confirmed": "yes"}),
    Action(
        AVATARS,
        "mark_failed",
        roles.FAIL_AVATAR,
        "running",
        {"confirmed": "yes", "reason": "blurry photos", "owner_message": "photos"},
    ),
    Action(AVATARS, "clear_stuck", roles.MANAGE_STUCK, "running"),
    Action(
        AVATARS, "extend_deadline", roles.MANAGE_STUCK, "running", {"confirmed": "yes", "hours": 6}
    ),
    Action(AVATARS, "resend_notification", roles.RESEND_NOTIFICATION, "given_up"),
    # Makes a lost submit startable again: the way to a new paid start.
    Action(AVATARS, "record_no_fal_job", roles.START_TRAINING, "lost", {"confirmed": "yes"}),
    # Re-processing a delivery can complete an avatar and tell its owner: the re-check
    # permission (it applies what fal said, as a re-check would).
    Action(DELIVERIES, "reprocess", roles.RECHECK_AVATAR, "delivery", {"confirmed": "yes"}),
    Action(
        NOTIFICATIONS,
        "resend",
        roles.RESEND_NOTIFICATION,
        "notification",
        {"confirmed": "yes"},
    ),
    # Support says an owner unblocked the bot: messages held back are sent again.
    Action(
        UNREACHABLE,
        "reachable_again",
        roles.RESEND_NOTIFICATION,
        "unreachable",
        {"confirmed": "yes"},
    ),
]
AVATAR_ACTION_NAMES = {a.name for a in ACTIONS if a.changelist == AVATARS}


def _view_permissions() -> list[Permission]:
    return list(
        Permission.objects.filter(
            content_type__app_label__in=("monitoring", "notifications"),
            codename__startswith="view_",
        )
    )


def make_person(kind: str) -> User:
    password = "unused-password-0123"
    if kind == "superuser":
        return User.objects.create_superuser("root", "root@example.com", password)
    user = User.objects.create_user(kind, password=password, is_staff=kind != "not_staff")
    if kind == "operator" or kind == "not_staff":
        user.groups.add(Group.objects.get(name=roles.OPERATORS))
    elif kind == "support":
        user.groups.add(Group.objects.get(name=roles.SUPPORT))
    elif kind == "viewer":
        user.user_permissions.add(*_view_permissions())
    return user


@pytest.fixture
def person(request, client, db):
    user = make_person(request.param)
    client.force_login(user)
    return request.param


# What each action acts on, in the order they are built; the notification and the
# unreachable chat belong to the avatar whose owner was never told.
TARGETS = ("running", "ready", "failed", "given_up", "delivery", "lost", "held")
PART_OF = {"notification": "given_up", "unreachable": "given_up"}


@pytest.fixture
def build_world(fal, make_avatar, training_avatar):
    """Build an object for every action to act on (or only for the targets named), each
    in a state where the action would work."""

    def build(*only: str) -> dict[str, Any]:
        wanted = {PART_OF.get(name, name) for name in only} or set(TARGETS)
        made: dict[str, Any] = {}
        fal.drop_webhooks()
        fal.script(queue_seconds=FOREVER, queue_position=3)
        if "running" in wanted:
            made["running"] = make_avatar(name="Running and stuck")
            training = start_training(made["running"], source=EventSource.COMMAND).training
            transitions.flag_stuck(training, reason="in queue too long")

        if "ready" in wanted:
            made["ready"] = make_avatar(name="Ready to train")

        if "failed" in wanted:
            made["failed"], failed_training = training_avatar(
                request_id="req-failed", name="Failed once"
            )
            transitions.fail(failed_training, error_message="bad photos", source=EventSource.CHECK)

        if "given_up" in wanted:
            given_up, done = training_avatar(request_id="req-done", name="Told nobody")
            transitions.complete(
                done, lora_url="https://v3.fal.media/a.safetensors", source=EventSource.CHECK
            )
            notification = Notification.objects.get(training=done, kind="ready")
            Notification.objects.filter(pk=notification.pk).update(
                status=NotificationStatus.GIVEN_UP
            )
            made["given_up"] = given_up
            made["notification"] = notification
            made["unreachable"] = UnreachableChat.objects.create(chat_id=given_up.owner.telegram_id)

        if "delivery" in wanted:
            # A verified delivery that arrived before its training existed: re-processing
            # it completes the avatar.
            signing_keys.forget()
            body = delivery_body("req-late", payload=lora_payload("req-late"))
            Client().post(
                WEBHOOK_URL,
                data=body,
                content_type="application/json",
                headers=fal.signer.headers(body, "req-late"),
            )
            training_avatar(request_id="req-late", name="Webhook came early")
            delivery = WebhookDelivery.objects.get(request_id="req-late")
            WebhookDelivery.objects.filter(pk=delivery.pk).update(outcome=WebhookOutcome.UNMATCHED)
            made["delivery"] = delivery

        if "lost" in wanted:
            # A submit whose answer was lost, looked for in fal's record past the give-up
            # time.
            fal.script("lost-submit-trigger", lose_submit_answer=True, queue_seconds=FOREVER)
            made["lost"] = make_avatar(name="Lost submit", trigger_word="lost-submit-trigger")
            lost_training = start_training(made["lost"], source=EventSource.COMMAND).training
            Training.objects.filter(pk=lost_training.pk).update(
                created_at=timezone.now() - timedelta(hours=25)
            )
            Training.objects.filter(pk=lost_training.pk).update(next_check_at=timezone.now())
            tasks.run_check()

        if "held" in wanted:
            # A start held for fal's balance (nothing sent).
            made["held"] = make_avatar(name="Held for the balance")
            held_training = transitions.begin_training(
                made["held"],
                endpoint="fal-ai/flux-lora-portrait-trainer",
                arguments={},
                webhook_url="",
                source=EventSource.COMMAND,
            ).training
            transitions.hold(held_training, reason="balance_low", source=EventSource.SYSTEM)
        return made

    return build


@pytest.fixture
def world(build_world):
    """One object for every action to act on, each in a state where the action would work."""
    return build_world()


def snapshot(fal) -> dict[str, Any]:
    """Everything an action could change, here or on fal."""
    return {
        "avatars": list(Avatar.objects.order_by("pk").values_list("pk", "status")),
        "trainings": list(
            Training.objects.order_by("pk").values_list(
                "pk", "fal_status", "stuck_since", "cancel_requested_at", "finished_at"
            )
        ),
        "events": AvatarEvent.objects.count(),
        "notifications": list(
            Notification.objects.order_by("pk").values_list("pk", "status", "attempts")
        ),
        "deliveries": list(WebhookDelivery.objects.order_by("pk").values_list("pk", "outcome")),
        "queued_tasks": OrmQ.objects.count(),
        "fal_jobs": len(fal.jobs),
        "fal_submits": len(fal.submissions),
        "fal_cancels": sum(fal.cancel_calls.values()),
        "admin_log": LogEntry.objects.count(),
        "unreachable": list(UnreachableChat.objects.values_list("chat_id", flat=True)),
    }


def post_action(client, action: Action, target: Any, *, confirmed: bool, select_across: bool):
    data: dict[str, Any] = {"action": action.name, "_selected_action": [target.pk], "index": 0}
    if confirmed:
        data.update(action.fields)
    if select_across:
        data["select_across"] = "1"
    return client.post(action.changelist, data)


def offered_actions(response) -> set[str]:
    form = response.context["action_form"]  # None when no action is offered at all
    return {name for name, _label in form.fields["action"].choices} - {""} if form else set()


# --- who is offered what --------------------------------------------------------------


@pytest.mark.parametrize("person", list(PEOPLE), indirect=True)
@pytest.mark.parametrize("changelist", [AVATARS, DELIVERIES, NOTIFICATIONS, UNREACHABLE])
def test_each_person_is_offered_exactly_the_actions_of_their_role(client, person, changelist):
    permissions, may_view = PEOPLE[person]

    response = client.get(changelist)

    if person == "not_staff":
        assert response.status_code == 302 and reverse("admin:login") in response["Location"]
        return
    if not may_view:
        assert response.status_code == 403
        return
    assert response.status_code == 200
    expected = {
        a.name for a in ACTIONS if a.changelist == changelist and a.permission in permissions
    }
    assert offered_actions(response) == expected


@pytest.mark.parametrize("person", list(PEOPLE), indirect=True)
@pytest.mark.parametrize("page", [DASHBOARD, STUCK_LIST])
def test_the_dashboard_and_stuck_list_need_the_avatar_view_permission(
    client, person, page, training_avatar
):
    _avatar, training = training_avatar(request_id="req-secret", name="Stuck one")
    transitions.flag_stuck(training, reason="in queue too long")
    _permissions, may_view = PEOPLE[person]

    response = client.get(page)

    if person == "not_staff":
        assert response.status_code == 302 and reverse("admin:login") in response["Location"]
    elif may_view:
        assert response.status_code == 200
        assert "Stuck one" in response.content.decode()
    else:
        assert response.status_code == 403
        assert "req-secret" not in response.content.decode()
        assert "Stuck one" not in response.content.decode()


@pytest.mark.parametrize("person", ["viewer", "no_permissions"], indirect=True)
def test_the_index_links_to_the_monitor_only_for_those_who_may_view_it(client, person):
    page = client.get(reverse("admin:index")).content.decode()

    assert ('id="staff-tools"' in page) is PEOPLE[person][1]


# --- who can run what -------------------------------------------------------------------


def _allowed():
    for who, (permissions, _view) in PEOPLE.items():
        for action in ACTIONS:
            if action.permission in permissions:
                yield pytest.param(who, action, id=f"{who}-{action.name}")


@pytest.mark.parametrize(("person", "action"), list(_allowed()), indirect=["person"])
def test_a_crafted_post_runs_an_action_for_those_whose_role_allows_it(
    client, person, action, build_world, fal
):
    # Only what the action acts on: the refusals below run against the whole world.
    target = build_world(action.target)[action.target]
    before = snapshot(fal)

    post_action(client, action, target, confirmed=False, select_across=False)
    confirmed = post_action(client, action, target, confirmed=True, select_across=False)

    after = snapshot(fal)
    assert confirmed.status_code == 302
    assert after != before
    assert after["admin_log"] > before["admin_log"]
    entry = LogEntry.objects.order_by("-pk").first()
    assert entry.user.username == ("root" if person == "superuser" else person)
    assert entry.object_id == str(target.pk)
    assert entry.get_change_message().startswith(action.name)


REFUSED = {
    who: [a for a in ACTIONS if a.permission not in permissions]
    for who, (permissions, _view) in PEOPLE.items()
}


@pytest.mark.parametrize("person", [who for who in PEOPLE if REFUSED[who]], indirect=True)
def test_a_crafted_post_changes_nothing_for_those_whose_role_refuses_it(client, person, world, fal):
    """Every action the role does not allow, the menu's first step then a confirmed post,
    with and without ``select_across``, one after the other on one world: a refusal
    changes nothing, so each case meets the world as it was built."""
    failures = []
    for action in REFUSED[person]:
        for select_across in (False, True):
            case = f"{person}-{action.name}-refused" + ("-select_across" if select_across else "")
            target = world[action.target]
            before = snapshot(fal)

            first_step = post_action(
                client, action, target, confirmed=False, select_across=select_across
            )
            confirmed = post_action(
                client, action, target, confirmed=True, select_across=select_across
            )

            after = snapshot(fal)
            # Not even the confirmation page: it would show what is selected.
            if "Yes, I’m sure" in first_step.content.decode():
                failures.append(f"{case}: the confirmation page was shown")
            # 403 without the view permission, the list again (with "No action selected."
            # when others are offered) with it, the login page when not staff.
            if confirmed.status_code not in (200, 302, 403):
                failures.append(f"{case}: answered {confirmed.status_code}")
            changed = {key for key in before if before[key] != after[key]}
            if changed:
                failures.append(f"{case}: changed {sorted(changed)}")
    assert not failures, "\n".join(failures)


# --- where the action runs ----------------------------------------------------------------


def test_an_action_reached_without_the_menu_still_refuses(world, fal, rf):
    """The check inside each action: a path that skips Django's menu is refused too."""
    from django.contrib import admin
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.core.exceptions import PermissionDenied

    support_only = User.objects.create_user("support-x", is_staff=True)
    support_only.user_permissions.add(*_view_permissions())
    failures = []
    for action in ACTIONS:
        model = type(world[action.target])
        modeladmin = admin.site.get_model_admin(model)
        request = rf.post(action.changelist, {**action.fields, "_selected_action": [1]})
        request.user = support_only
        request.session = {}
        request._messages = FallbackStorage(request)
        # The action as declared, not as Django's permission-filtered menu hands it out.
        [run] = [func for func, name, _ in modeladmin._get_base_actions() if name == action.name]
        before = snapshot(fal)

        try:
            run(modeladmin, request, model.objects.filter(pk=world[action.target].pk))
        except PermissionDenied:
            pass
        else:
            failures.append(f"{action.name}: ran without raising PermissionDenied")

        after = snapshot(fal)
        changed = {key for key in before if before[key] != after[key]}
        if changed:
            failures.append(f"{action.name}: changed {sorted(changed)}")
    assert not failures, "\n".join(failures)


# --- the bulk start cap ------------------------------------------------------------------


@pytest.mark.parametrize("select_across", [False, True], ids=["selected", "select_across"])
def test_a_bulk_start_over_the_cap_starts_nothing(
    admin_client, fal, make_avatar, settings, select_across
):
    settings.ADMIN_BULK_START_MAX = 2
    fal.script(queue_seconds=FOREVER)
    avatars = [make_avatar(name=f"Bulk {n}") for n in range(3)]
    data = {
        "action": "start_training",
        "_selected_action": [a.pk for a in (avatars[:1] if select_across else avatars)],
        "confirmed": "yes",
        "index": 0,
    }
    if select_across:
        data["select_across"] = "1"

    response = admin_client.post(AVATARS, data, follow=True)

    messages = [str(m) for m in response.context["messages"]]
    assert any(
        "Nothing was started: 3 avatars are selected" in m and "at most 2" in m for m in messages
    )
    assert fal.submissions == [] and fal.jobs == {}
    assert Training.objects.count() == 0
    assert set(Avatar.objects.values_list("status", flat=True)) == {"ready_for_training"}


def test_a_bulk_start_at_the_cap_starts_them_all(admin_client, fal, make_avatar, settings):
    settings.ADMIN_BULK_START_MAX = 2
    fal.script(queue_seconds=FOREVER)
    avatars = [make_avatar(name=f"Bulk {n}") for n in range(2)]

    admin_client.post(
        AVATARS,
        {
            "action": "start_training",
            "_selected_action": [a.pk for a in avatars],
            "confirmed": "yes",
        },
    )

    assert len(fal.submissions) == 2
    assert set(Avatar.objects.values_list("status", flat=True)) == {"training"}
    logged = LogEntry.objects.filter(change_message__startswith="start_training")
    assert sorted(int(e.object_id) for e in logged) == sorted(a.pk for a in avatars)


def test_a_retrain_over_the_cap_starts_nothing(admin_client, fal, training_avatar, settings):
    settings.ADMIN_BULK_START_MAX = 1
    failed = []
    for n in range(2):
        avatar, training = training_avatar(request_id=f"req-f{n}", name=f"Failed {n}")
        transitions.fail(training, error_message="bad photos", source=EventSource.CHECK)
        failed.append(avatar)

    ask = admin_client.post(
        AVATARS, {"action": "retrain", "_selected_action": [a.pk for a in failed]}, follow=True
    )

    assert "Yes, I’m sure" not in ask.content.decode()
    assert any("Nothing was started" in str(m) for m in ask.context["messages"])
    assert fal.submissions == []
    assert set(Avatar.objects.values_list("status", flat=True)) == {"error"}
