"""Money end to end against the fal emulator: what each training cost, where it shows, the
balance guard that holds new starts, budgets and quotes (docs/billing.md)."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from monitoring import billing, status_checks, tasks
from monitoring.models import (
    Avatar,
    AvatarStatus,
    CostState,
    EventSource,
    FalAccount,
    FalStatus,
    Training,
    TrainingOutcome,
    UnknownFalRequest,
)
from monitoring.trainings import start_training
from notifications.models import Audience, Notification, NotificationKind
from tests.api_support import body, run_check
from tests.support import run_queued_monitoring_tasks

PORTRAIT = "fal-ai/flux-lora-portrait-trainer"
METRICS_TOKEN = "metrics-token-for-billing-tests"
CHANGELIST = reverse("admin:monitoring_avatar_changelist")


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.FAL_PLATFORM_TIMEOUT_SECONDS = 2.0
    settings.FAL_BALANCE_CHECK_SECONDS = 600


def look_up(after: timedelta) -> billing.LookupReport:
    """The billing lookup as it runs ``after`` the trainings finished."""
    latest = max(Training.objects.exclude(finished_at=None).values_list("finished_at", flat=True))
    return billing.look_up_costs(now=latest + after)


def completed_via_api(fal, bot, **changes) -> Avatar:
    fal.drop_webhooks()
    answer = bot.post("/api/v1/trainings", body(**changes), key=str(changes))
    assert answer.status_code == 201, answer.content
    run_check()
    avatar = Avatar.objects.get(pk=answer.json()["avatar"]["id"])
    assert avatar.status == AvatarStatus.COMPLETED
    return avatar


def read_balance_now() -> dict:
    """The scheduled balance task, with its last reading made old enough to read again."""
    FalAccount.objects.filter(pk=1).update(last_attempt_at=timezone.now() - timedelta(seconds=601))
    return tasks.check_balance()


def staff_balance_alerts() -> list[str]:
    rows = Notification.objects.filter(
        kind=NotificationKind.FAL_ACCOUNT, audience=Audience.STAFF, dedup_key__startswith="fal_"
    )
    return list(rows.values_list("text", flat=True))


def owner_messages() -> int:
    return Notification.objects.filter(audience=Audience.OWNER).count()


# --- Cost per training ------------------------------------------------------------------------


def test_a_completed_trainings_cost_shows_in_the_api_the_command_the_admin_and_metrics(
    fal, bot, admin_client, client, settings
):
    avatar = completed_via_api(fal, bot, settings={"steps": 1000})
    assert bot.get(f"/api/v1/avatars/{avatar.pk}").json()["trainings"][0]["cost"] is None

    report = look_up(timedelta(seconds=61))

    assert (report.billed, report.calls) == (1, 1)
    data = bot.get(f"/api/v1/avatars/{avatar.pk}").json()
    expected = {"usd": "2.700000", "units": 1000, "unit_price": "0.0027"}
    assert data["trainings"][0]["cost"] == expected
    assert data["cost_usd"] == "2.700000"
    training = Training.objects.get(avatar=avatar)
    assert training.cost_nano_usd == 2_700_000_000

    out = io.StringIO()
    call_command("check_avatar_db", "--json", stdout=out)
    [row] = [r for r in json.loads(out.getvalue()) if r["id"] == str(avatar.pk)]
    assert row["cost_usd"] == "2.700000" and row["cost"] == expected

    page = admin_client.get(reverse("admin:monitoring_avatar_change", args=[avatar.pk]))
    assert "$2.700000" in page.content.decode()
    listing = admin_client.get(reverse("admin:monitoring_training_changelist"))
    assert "$2.700000" in listing.content.decode()
    dashboard = billing.spend()
    assert (dashboard.today, dashboard.week, dashboard.month) == (2_700_000_000,) * 3
    assert dashboard.by_trainer == [(PORTRAIT, 2_700_000_000)]
    assert dashboard.top_owners[0]["avatar__owner__telegram_id"] == 555000111
    assert dashboard.per_completed_avatar == 2_700_000_000
    page = admin_client.get(reverse("admin:monitoring_dashboard")).content.decode()
    assert "$2.70" in page and "@anna" in page

    settings.METRICS_TOKEN = METRICS_TOKEN
    text = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.content.decode())
        for s in family.samples
    }
    spend = samples[("avatar_monitor_fal_spend_usd_total", (("endpoint", PORTRAIT),))]
    assert spend == pytest.approx(2.7)
    # The counter is a running total: pruning the trainings lowers nothing.
    Training.objects.all().delete()
    text = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert f'avatar_monitor_fal_spend_usd_total{{endpoint="{PORTRAIT}"}} 2.7' in (
        text.content.decode()
    )


def test_a_billing_lag_of_minutes_is_waited_out_with_backoff(fal, bot):
    fal.billing_lag = 15 * 60  # fal bills a quarter of an hour after the end
    avatar = completed_via_api(fal, bot)
    calls = []
    for minutes in (1, 3, 7, 10):
        fal.billing_clock_ahead = minutes * 60
        calls.append(look_up(timedelta(minutes=minutes, seconds=1)).looked_up)
    training = Training.objects.get(avatar=avatar)
    # Looked up at 1 min, then 2 and 4 minutes later (not at 10: the next is 8 min on).
    assert calls == [1, 1, 1, 0] and training.cost_state == CostState.PENDING
    assert training.cost_lookups == 3

    fal.billing_clock_ahead = 16 * 60
    assert look_up(timedelta(minutes=15, seconds=1)).billed == 1

    training.refresh_from_db()
    assert training.cost_state == CostState.BILLED
    assert billing.usd_text(training.cost_nano_usd) == "1.350000"  # 500 steps at $0.0027


def test_a_training_fal_never_billed_says_so_after_the_window(fal, bot):
    fal.script(billed=False)
    avatar = completed_via_api(fal, bot)

    assert look_up(timedelta(hours=23)).not_billed == 0
    assert Training.objects.get(avatar=avatar).cost_state == CostState.PENDING
    assert look_up(timedelta(hours=24, seconds=1)).not_billed == 1

    data = bot.get(f"/api/v1/avatars/{avatar.pk}").json()
    assert data["trainings"][0]["cost"] == {"usd": "0.000000", "units": 0, "unit_price": None}
    assert data["cost_usd"] == "0.000000"


def test_each_attempt_in_one_batch_keeps_its_own_billing_window(fal, bot):
    fal.script(billed=False)
    old = Training.objects.get(avatar=completed_via_api(fal, bot, name="Old"))
    new = Training.objects.get(avatar=completed_via_api(fal, bot, name="New"))
    Training.objects.filter(pk=old.pk).update(finished_at=new.finished_at - timedelta(hours=24))

    report = look_up(timedelta(hours=1))

    assert (report.looked_up, report.not_billed) == (2, 1)
    old.refresh_from_db()
    new.refresh_from_db()
    assert old.cost_state == CostState.NOT_BILLED and old.cost_next_lookup_at is None
    assert new.cost_state == CostState.PENDING
    # The next lookup of the recent attempt is within its own window, not the old one's.
    assert new.finished_at + timedelta(hours=1) < new.cost_next_lookup_at
    assert new.cost_next_lookup_at <= new.finished_at + timedelta(hours=24)


def test_a_failed_but_billed_attempt_counts_towards_its_avatar(fal, bot):
    fal.script(
        "fail-first", error="Could not extract faces", error_type="image_load_error", fail_first=1
    )
    fal.drop_webhooks()
    answer = bot.post(
        "/api/v1/trainings", body(images_url="https://example.com/fail-first.zip"), key="k1"
    )
    avatar_id = answer.json()["avatar"]["id"]
    run_check()
    assert Avatar.objects.get(pk=avatar_id).status == AvatarStatus.ERROR
    assert bot.post(f"/api/v1/avatars/{avatar_id}/trainings", key="k2").status_code == 201
    run_check()

    look_up(timedelta(minutes=2))

    data = bot.get(f"/api/v1/avatars/{avatar_id}").json()
    assert [t["outcome"] for t in data["trainings"]] == ["error", "completed"]
    assert [t["cost"]["usd"] for t in data["trainings"]] == ["1.350000", "1.350000"]
    assert data["cost_usd"] == "2.700000"


def test_without_a_key_that_may_read_billing_costs_are_off_and_nothing_fails(
    fal, bot, admin_client
):
    fal.admin_key = "admin-id:admin-secret-value"  # our queue key is not an admin key
    avatar = completed_via_api(fal, bot)

    report = look_up(timedelta(minutes=2))
    assert report.billed == 0 and "403" in report.error
    assert read_balance_now()["balance"] is None

    assert bot.get(f"/api/v1/avatars/{avatar.pk}").json()["trainings"][0]["cost"] is None
    page = admin_client.get(reverse("admin:monitoring_dashboard"))
    assert page.status_code == 200 and "not configured" in page.content.decode()
    # A start is never held for a balance nobody could read.
    assert billing.hold_reason() == ""


def test_reconcile_shows_what_each_request_nobody_follows_cost(fal, db):
    other = fal.add_record(PORTRAIT, json_input={"images_data_url": "x", "steps": 100})

    out = io.StringIO()
    call_command("reconcile_fal", stdout=out)

    assert f"unknown: {other}" in out.getvalue() and "cost $0.270000" in out.getvalue()
    assert UnknownFalRequest.objects.get(request_id=other).cost_nano_usd == 270_000_000


# --- The balance guard ----------------------------------------------------------------------


def test_under_the_hold_threshold_starts_from_everywhere_wait_and_go_once_in_order(
    fal, bot, admin_client, make_avatar, make_owner
):
    fal.drop_webhooks()
    fal.script(queue_seconds=600)
    fal.balance = Decimal("8.42")
    read_balance_now()

    by_api = bot.post("/api/v1/trainings", body(), key="held-1")
    assert by_api.status_code == 202
    assert by_api.json()["training"]["submit"] == "held"
    assert by_api.json()["training"]["held_reason"] == "balance_low"
    by_admin = make_avatar(owner=make_owner(), name="From the admin")
    admin_client.post(
        CHANGELIST,
        {"action": "start_training", "_selected_action": [by_admin.pk], "confirmed": "yes"},
    )
    by_command = make_avatar(owner=make_owner(), name="From the command")
    out = io.StringIO()
    call_command("start_training", "--avatar", str(by_command.pk), "--json", stdout=out)
    assert json.loads(out.getvalue())["submit"] == "held"

    held = list(Training.objects.held())
    assert [t.avatar.name for t in held] == ["Anna portrait", "From the admin", "From the command"]
    assert all(t.avatar.status == AvatarStatus.TRAINING for t in held)
    assert fal.submissions == [] and owner_messages() == 0
    # The periodic check, the stuck flags and the restore leave them alone.
    Training.objects.filter(pk__in=[t.pk for t in held]).update(
        created_at=timezone.now() - timedelta(hours=30)
    )
    status_checks.restore_monitoring(enqueue=False)
    run_check()
    assert not Training.objects.filter(stuck_since__isnull=False).exists()
    assert Training.objects.held().count() == 3 and fal.submissions == []
    [alert] = staff_balance_alerts()
    assert "$8.42" in alert
    page = admin_client.get(reverse("admin:monitoring_avatar_change", args=[by_admin.pk]))
    assert "waiting for fal balance" in page.content.decode()

    read_balance_now()  # still low: the same episode, no second message
    fal.balance = Decimal("250.00")
    read_balance_now()
    read_balance_now()

    assert [s["payload"]["images_data_url"] for s in fal.submissions] == [
        "https://example.com/anna.zip",
        by_admin.images_url,
        by_command.images_url,
    ]
    assert not Training.objects.held().exists()
    assert Training.objects.filter(fal_request_id__isnull=False).count() == 3
    assert len(staff_balance_alerts()) == 1 and owner_messages() == 0


def test_crossing_both_thresholds_at_once_is_one_message_naming_the_balance_to_the_cent(
    fal, training_avatar
):
    # $30 spent in the last day: $3.46 lasts under three hours, and is under $50 too.
    _avatar, training = training_avatar()
    Training.objects.filter(pk=training.pk).update(
        finished_at=timezone.now() - timedelta(hours=2),
        cost_state=CostState.BILLED,
        cost_nano_usd=30 * billing.NANO,
    )
    fal.balance = Decimal("3.456")
    read_balance_now()
    read_balance_now()
    [alert] = staff_balance_alerts()
    assert "$3.46" in alert and "~2.8" in alert


def test_a_user_is_locked_submit_is_held_and_released_by_the_next_good_reading(
    fal, make_avatar, make_owner
):
    fal.drop_webhooks()
    fal.refuse_next_submit(403)
    first = make_avatar(owner=make_owner(), name="first")
    outcome = start_training(first, source=EventSource.COMMAND)
    assert outcome.training.is_held
    assert outcome.training.held_reason == "account_locked"
    second = make_avatar(owner=make_owner(), name="second")
    start_training(second, source=EventSource.COMMAND)

    assert len(fal.submissions) == 1  # the second was never sent into the locked account
    assert Training.objects.held().count() == 2
    [alert] = staff_balance_alerts()
    assert "403" in alert
    first.refresh_from_db()
    assert first.status == AvatarStatus.TRAINING and owner_messages() == 0

    read_balance_now()  # fal's default balance: well above the threshold

    assert [s["payload"]["images_data_url"] for s in fal.submissions[1:]] == [
        first.images_url,
        second.images_url,
    ]
    assert Training.objects.filter(fal_request_id__isnull=False).count() == 2
    assert FalAccount.objects.get().locked_since is None


def test_an_operator_releases_a_held_start_and_a_refusal_holds_it_again(
    fal, admin_client, make_avatar
):
    fal.balance = Decimal("1.00")  # fal itself locks below 5
    read_balance_now()
    avatar = make_avatar(name="waiting")
    start_training(avatar, source=EventSource.COMMAND)

    release = {"action": "release_held", "_selected_action": [avatar.pk], "confirmed": "yes"}
    admin_client.post(CHANGELIST, release)  # fal answers 403: held again
    assert fal.submissions == [] and Training.objects.held().count() == 1

    fal.balance = Decimal("7.00")  # fal unlocks; our hold threshold (10) still holds
    admin_client.post(CHANGELIST, release)
    assert len(fal.submissions) == 1
    avatar.refresh_from_db()
    assert avatar.current_training.fal_request_id and not Training.objects.held().exists()


def test_cancelling_a_held_start_is_local_and_tells_nobody(fal, bot):
    fal.balance = Decimal("2.00")
    read_balance_now()
    answer = bot.post("/api/v1/trainings", body(), key="cancel-held")
    avatar_id = answer.json()["avatar"]["id"]

    cancelled = bot.post(f"/api/v1/avatars/{avatar_id}/cancel")

    assert cancelled.status_code == 202 and cancelled.json()["cancel"] == "cancelled"
    assert fal.submissions == [] and sum(fal.cancel_calls.values()) == 0
    assert owner_messages() == 0


def test_an_automatic_retry_while_the_balance_is_held_waits_with_the_held_starts(
    fal, make_avatar, make_owner, django_capture_on_commit_callbacks
):
    fal.drop_webhooks()
    fal.script(
        fail_first=1,
        error="Runner disconnected",
        error_type="runner_disconnected",
        result_status=503,
    )
    avatar = make_avatar(owner=make_owner(), name="retried")
    start_training(avatar, source=EventSource.COMMAND)
    fal.balance = Decimal("9.00")
    read_balance_now()

    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            run_check()
        with django_capture_on_commit_callbacks(execute=True):
            run_queued_monitoring_tasks()

    first, retry = Training.objects.filter(avatar=avatar).order_by("attempt")
    assert first.outcome == TrainingOutcome.RETRIED
    assert retry.fal_status == FalStatus.HELD and len(fal.submissions) == 1

    fal.balance = Decimal("80.00")
    read_balance_now()
    with django_capture_on_commit_callbacks(execute=True):
        run_check()

    assert len(fal.submissions) == 2
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED and owner_messages() == 1


# --- Budgets and quotes ------------------------------------------------------------------------


def test_a_client_over_its_daily_budget_gets_402_and_nothing_is_submitted(fal, bot):
    fal.script(queue_seconds=600)
    bot.client.daily_budget_usd = Decimal("1.00")
    bot.client.save()
    assert bot.post("/api/v1/trainings", body(), key="b1").status_code == 201
    submitted = len(fal.submissions)

    refused = bot.post("/api/v1/trainings", body(name="Second"), key="b2")

    assert refused.status_code == 402
    assert refused.json()["error"] == "over_budget"
    assert "1.350000" in refused.json()["detail"]
    assert len(fal.submissions) == submitted
    assert not Avatar.objects.filter(name="Second").exists()


def test_the_quote_matches_the_emulators_unit_price(fal, bot):
    answer = bot.get("/api/v1/quote", training_type="portrait", steps=2500)
    assert answer.status_code == 200
    assert answer.json() == {
        "usd": "6.750000",
        "unit": "steps",
        "unit_price": "0.0027",
        "quantity": 2500,
        "endpoint": PORTRAIT,
    }
    fal.prices[PORTRAIT] = ("0.0030", "steps")
    # Cached an hour: the same answer, one pricing call.
    assert bot.get("/api/v1/quote", training_type="portrait", steps=2500).json()["usd"] == (
        "6.750000"
    )
    assert bot.get("/api/v1/quote", training_type="portrait", steps=0).status_code == 422


def test_the_admins_start_confirmation_shows_the_estimate(fal, admin_client, make_avatar):
    avatars = [make_avatar(name=f"a{i}") for i in range(2)]
    page = admin_client.post(
        CHANGELIST, {"action": "start_training", "_selected_action": [a.pk for a in avatars]}
    )
    assert "2 trainings, about $13.50." in page.content.decode()
    assert fal.submissions == []
