"""The ETA of active trainings: computed by the checks from our own history, shown by the
API, check_avatar_db, the admin and the dashboard (docs/eta.md)."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from fakes.fal_emulator import FOREVER
from monitoring import eta
from monitoring.fal.payloads import ENDPOINTS
from monitoring.models import Training, TrainingOutcome
from tests.api_support import body, run_check

pytestmark = pytest.mark.django_db

PORTRAIT = "fal-ai/flux-lora-portrait-trainer"


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0


@pytest.fixture
def history(make_avatar):
    """``history(n, run_minutes, queue_minutes=2, first_position=3, steps=500)``: finished
    trainings of the portrait trainer, as earlier checks left them."""

    def make(n, run_minutes, *, queue_minutes=2.0, first_position=3, steps=500, outcome=None):
        avatar = make_avatar()
        now = timezone.now()
        for i in range(n):
            submitted = now - timedelta(hours=2 + i)
            started = submitted + timedelta(minutes=queue_minutes)
            Training.objects.create(
                avatar=avatar,
                attempt=i + 1,
                endpoint=PORTRAIT,
                arguments={"steps": steps} if steps is not None else {},
                submitted_at=submitted,
                started_at=started,
                finished_at=started + timedelta(minutes=run_minutes),
                outcome=outcome or TrainingOutcome.COMPLETED,
                queue_position_first=first_position,
            )

    return make


def start(bot, django_capture_on_commit_callbacks, **changes) -> dict:
    with django_capture_on_commit_callbacks(execute=True):
        response = bot.post("/api/v1/trainings", body(**changes), key=str(changes) or "k")
    assert response.status_code == 201, response.content
    return response.json()["avatar"]


def minutes_left(moment: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(moment) - timezone.now()).total_seconds() / 60


def test_before_there_is_history_the_trainers_default_is_used(
    fal, bot, django_capture_on_commit_callbacks
):
    fal.script(queue_seconds=FOREVER, queue_position=0)
    avatar = start(bot, django_capture_on_commit_callbacks)

    got = bot.get(f"/api/v1/avatars/{avatar['id']}").json()
    found = got["eta"]
    # Half a position of the default 60 s, plus the portrait default of 25 min.
    assert 25 < minutes_left(found["at"]) < 26
    assert minutes_left(found["low"]) < minutes_left(found["at"]) < minutes_left(found["high"])
    assert found["late"] is False
    assert got["trainings"][0]["eta"] == found


def test_the_estimate_comes_from_the_same_trainers_history_with_the_same_steps(
    fal, bot, history, django_capture_on_commit_callbacks
):
    history(12, run_minutes=10, queue_minutes=2, first_position=3)  # 30 s a position
    history(12, run_minutes=40, steps=None)  # another steps setting: not used
    history(12, run_minutes=40, outcome=TrainingOutcome.ERROR)  # not completed: not used
    fal.script(queue_seconds=FOREVER, queue_position=3)
    avatar = start(bot, django_capture_on_commit_callbacks)

    found = bot.get(f"/api/v1/avatars/{avatar['id']}").json()["eta"]
    # 3.5 positions × 30 s + a 10 min run.
    assert 11.5 < minutes_left(found["at"]) < 12
    assert minutes_left(found["low"]) <= minutes_left(found["at"]) <= minutes_left(found["high"])


def test_the_queue_part_follows_the_rate_at_which_positions_drain(
    fal, bot, history, django_capture_on_commit_callbacks
):
    history(12, run_minutes=10)
    fal.script(queue_seconds=FOREVER, queue_position=20)
    avatar = start(bot, django_capture_on_commit_callbacks)
    training = Training.objects.get(avatar_id=avatar["id"])
    run_check()
    # Five minutes later fal says 10: two positions a minute.
    Training.objects.filter(pk=training.pk).update(
        last_checked_at=timezone.now() - timedelta(minutes=5)
    )
    fal.script(training.fal_request_id, queue_position=10)
    run_check()

    training.refresh_from_db()
    assert training.queue_drain_per_minute == pytest.approx(2.0, rel=0.05)
    found = bot.get(f"/api/v1/avatars/{avatar['id']}").json()["eta"]
    # 10.5 positions at 2 a minute, plus the 10 min run.
    assert 15 < minutes_left(found["at"]) < 15.5


def test_past_its_range_a_training_is_taking_longer_than_usual_and_never_pretends(
    fal, bot, history, settings, admin_client, django_capture_on_commit_callbacks
):
    history(12, run_minutes=10)
    fal.script(queue_seconds=0, run_seconds=FOREVER)
    avatar = start(bot, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        run_check()
    training = Training.objects.get(avatar_id=avatar["id"])
    assert training.started_at is not None and not training.eta_late
    Training.objects.filter(pk=training.pk).update(
        started_at=timezone.now() - timedelta(minutes=20)
    )
    with django_capture_on_commit_callbacks(execute=True):
        run_check()
        run_check()

    got = bot.get(f"/api/v1/avatars/{avatar['id']}").json()
    assert got["eta"] == {"at": None, "low": None, "high": None, "late": True}
    page = admin_client.get(reverse("admin:monitoring_avatar_change", args=[avatar["id"]]))
    assert "taking longer than usual" in page.content.decode()


def test_finished_trainings_have_no_eta(fal, bot, django_capture_on_commit_callbacks):
    avatar = start(bot, django_capture_on_commit_callbacks)
    run_check()
    got = bot.get(f"/api/v1/avatars/{avatar['id']}").json()
    assert got["status"] == "completed"
    assert got["eta"] is None and got["trainings"][0]["eta"] is None


def test_check_avatar_db_json_carries_the_same_eta_as_the_api(
    fal, bot, django_capture_on_commit_callbacks
):
    fal.script(queue_seconds=FOREVER, queue_position=4)
    avatar = start(bot, django_capture_on_commit_callbacks)
    out = io.StringIO()
    call_command("check_avatar_db", "--json", stdout=out)
    [row] = json.loads(out.getvalue())
    assert row["eta"] == bot.get(f"/api/v1/avatars/{avatar['id']}").json()["eta"]
    assert row["eta"]["at"]


def test_listing_reads_the_stored_estimate_with_no_query_per_avatar(
    fal, bot, make_avatar, django_assert_max_num_queries, django_capture_on_commit_callbacks
):
    fal.script(queue_seconds=FOREVER, queue_position=2)

    def count() -> int:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as queries:
            items = bot.get("/api/v1/avatars", limit=50).json()["items"]
        assert all(item["eta"] for item in items)
        return len(queries)

    for i in range(2):
        start(bot, django_capture_on_commit_callbacks, name=f"A{i}")
    few = count()
    for i in range(2, 7):
        start(bot, django_capture_on_commit_callbacks, name=f"A{i}")
    assert count() == few


def test_the_admin_list_and_the_dashboard_show_it(
    fal, bot, history, admin_client, django_capture_on_commit_callbacks
):
    history(12, run_minutes=10, queue_minutes=2)
    fal.script(queue_seconds=FOREVER, queue_position=1)
    avatar = start(bot, django_capture_on_commit_callbacks)
    training = Training.objects.get(avatar_id=avatar["id"])
    at = training.eta_at.strftime("%H:%M")

    listing = admin_client.get(reverse("admin:monitoring_avatar_changelist")).content.decode()
    assert f"ready around {at} UTC" in listing
    page = admin_client.get(reverse("admin:monitoring_dashboard")).content.decode()
    portrait = page.split('class="eta-portrait"', 1)[1].split("</tr>", 1)[0]
    assert "2.0 min" in portrait and "10.0 min" in portrait and ">12<" in portrait


def test_trainer_defaults_apply_per_trainer(settings):
    settings.ETA_DEFAULT_STYLE_MINUTES = 8
    style = eta.default_history(ENDPOINTS["style"])
    portrait = eta.default_history(PORTRAIT)
    assert eta.quantile(style.runs, 0.5) == pytest.approx(8 * 60, rel=0.01)
    assert eta.quantile(portrait.runs, 0.5) == pytest.approx(25 * 60, rel=0.01)


def test_an_edit_needs_a_new_phase_or_an_eta_moved_by_a_fifth_and_two_minutes():
    from notifications.progress import Basis, wants_edit

    now = timezone.now()

    def moved(left: float, to: float, phase: str = "queue") -> bool:
        sent = Basis("queue", now + timedelta(minutes=left))
        return wants_edit(sent, Basis(phase, now + timedelta(minutes=to)), now)

    assert not moved(20, 23)  # 3 min of 20: less than a fifth
    assert moved(20, 25)  # 5 min of 20
    assert moved(20, 15)  # earlier counts too
    assert not moved(5, 6.5)  # a fifth, but under 2 minutes
    assert moved(5, 7.5)
    assert moved(20, 20, phase="run")  # queue → training always shows
