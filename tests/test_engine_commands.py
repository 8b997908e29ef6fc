"""The start_training and check_avatar_db commands other issues and the tests rely on."""

from __future__ import annotations

import json
from datetime import datetime
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from monitoring import transitions
from monitoring.models import Avatar, AvatarStatus, EventSource, Owner, Training

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_start_training_creates_the_owner_and_avatar_and_prints_only_json(fal):
    out = run(
        "start_training",
        "--owner-telegram-id",
        "4242",
        "--name",
        "Маша",
        "--images-url",
        "https://example.com/masha.zip",
        "--training-type",
        "style",
        "--trigger",
        "mashastyle",
        "--owner-language",
        "en",
        "--json",
    )
    answer = json.loads(out)
    assert set(answer) == {"id", "fal_request_id"}
    avatar = Avatar.objects.get(pk=int(answer["id"]))
    assert avatar.status == AvatarStatus.TRAINING and avatar.training_type == "style"
    assert avatar.owner.telegram_id == 4242 and avatar.owner.language == "en"
    assert answer["fal_request_id"] == avatar.current_training.fal_request_id
    assert answer["fal_request_id"] in fal.jobs


def test_start_training_starts_an_existing_avatar(fal, make_avatar):
    avatar = make_avatar(ready=False)  # a draft is made ready first
    out = run("start_training", "--avatar", str(avatar.pk))
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert avatar.current_training.fal_request_id in out


def test_start_training_explains_what_is_missing(fal):
    with pytest.raises(CommandError, match="missing: --images-url, --trigger"):
        run("start_training", "--owner-telegram-id", "1", "--name", "x")
    with pytest.raises(CommandError, match="No avatar with id 999999"):
        run("start_training", "--avatar", "999999")
    assert not Owner.objects.exists() and not fal.submissions


def test_start_training_refuses_an_avatar_that_is_already_training(fal, make_avatar):
    avatar = make_avatar()
    run("start_training", "--avatar", str(avatar.pk))
    with pytest.raises(CommandError, match="cannot start: it is training"):
        run("start_training", "--avatar", str(avatar.pk))
    assert len(fal.submissions) == 1


def test_start_training_reports_fals_refusal_and_the_avatar_stays_startable(fal, make_avatar):
    fal.refuse_next_submit(422)
    avatar = make_avatar()
    with pytest.raises(CommandError, match="field required"):
        run("start_training", "--avatar", str(avatar.pk))
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.READY_FOR_TRAINING


def test_check_avatar_db_lists_avatars_as_json_with_filters(
    training_avatar, make_avatar, make_owner
):
    owner = make_owner(telegram_id=777, username="anna")
    running, training = training_avatar(request_id="req-running", owner=owner, name="Бегущий")
    transitions.flag_stuck(training, reason="in fal's queue for 70 min")
    failed, failed_training = training_avatar(request_id="req-failed")
    transitions.fail(
        failed_training, error_message="No faces", error_type="x", source=EventSource.CHECK
    )
    make_avatar(name="Черновик", ready=False)

    rows = json.loads(run("check_avatar_db", "--json"))
    assert len(rows) == 3
    by_id = {row["id"]: row for row in rows}
    row = by_id[str(running.pk)]
    for field in (
        "id",
        "name",
        "status",
        "fal_status",
        "fal_request_id",
        "lora_url",
        "error",
        "stuck",
        "owner_telegram_id",
        "created_at",
        "finished_at",
    ):
        assert field in row
    assert (row["name"], row["status"], row["fal_status"]) == ("Бегущий", "training", "IN_QUEUE")
    assert (row["fal_request_id"], row["stuck"], row["owner_telegram_id"]) == (
        "req-running",
        True,
        "777",
    )
    datetime.fromisoformat(row["created_at"])
    assert by_id[str(failed.pk)]["error"] == "No faces"
    datetime.fromisoformat(by_id[str(failed.pk)]["finished_at"])

    assert [r["id"] for r in json.loads(run("check_avatar_db", "--json", "--status", "error"))] == [
        str(failed.pk)
    ]
    assert [r["id"] for r in json.loads(run("check_avatar_db", "--json", "--stuck"))] == [
        str(running.pk)
    ]
    assert [r["id"] for r in json.loads(run("check_avatar_db", "--json", "--owner", "@anna"))] == [
        str(running.pk)
    ]
    assert [r["id"] for r in json.loads(run("check_avatar_db", "--json", "--owner", "777"))] == [
        str(running.pk)
    ]


def test_check_avatar_db_prints_a_table(training_avatar):
    avatar, _ = training_avatar(request_id="req-table", name="Таблица")
    out = run("check_avatar_db")
    assert "Таблица" in out and "req-table" in out and "1 avatar(s)" in out
    assert Training.objects.count() == 1
