"""Commands speak LANGUAGE_CODE or --language to people; --json is the same in every language."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from fakes.fal_emulator import FOREVER
from monitoring.models import EventSource
from monitoring.trainings import start_training


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_the_avatar_table_follows_language_code_and_the_option(training_avatar, settings):
    training_avatar(request_id="req-lang", name="Анна")

    english = run("check_avatar_db")
    russian = run("check_avatar_db", "--language", "ru")
    settings.LANGUAGE_CODE = "ru"
    by_setting = run("check_avatar_db")
    forced_english = run("check_avatar_db", "--language", "en")

    assert "fal status" in english and "In queue" in english and "1 avatar(s)" in english
    assert "статус fal" in russian and "В очереди" in russian and "аватаров: 1" in russian
    assert "fal status" not in russian
    assert by_setting == russian
    assert forced_english == english


def test_json_output_is_never_translated(training_avatar, settings):
    training_avatar(request_id="req-json", name="Анна")

    english = json.loads(run("check_avatar_db", "--json"))
    russian = json.loads(run("check_avatar_db", "--json", "--language", "ru"))
    settings.LANGUAGE_CODE = "ru"
    by_setting = json.loads(run("check_avatar_db", "--json"))

    assert english == russian == by_setting
    assert english[0]["status"] == "training" and english[0]["fal_status"] == "IN_QUEUE"


def test_errors_follow_the_language_too(db):
    with pytest.raises(CommandError, match="Нет аватара с id 999999"):
        call_command("start_training", "--avatar", "999999", "--language", "ru")
    with pytest.raises(CommandError, match="No avatar with id 999999"):
        call_command("start_training", "--avatar", "999999")


def test_an_unknown_language_is_refused(db):
    with pytest.raises(CommandError, match="--language"):
        call_command("check_avatar_db", "--language", "de")


def test_the_check_summary_follows_the_language(fal, make_avatar):
    """What a check saw is worded for the reader (manual_status_check has no --json)."""
    fal.drop_webhooks()
    fal.script(queue_seconds=FOREVER, queue_position=4)
    avatar = make_avatar()
    training = start_training(avatar, source=EventSource.COMMAND).training
    assert training is not None
    training.cancel_requested_at = training.created_at
    training.save(update_fields=["cancel_requested_at"])
    args = ("manual_status_check", "--avatar", str(avatar.pk), "-v", "2")

    english, russian = run(*args), run(*args, "--language", "ru")

    assert (
        "unchanged (IN_QUEUE) still In queue; cancellation requested, fal has not stopped it "
        "yet" in english
    )
    assert (
        "без изменений (IN_QUEUE) всё ещё В очереди; отмена запрошена, fal её ещё не "
        "остановил" in russian
    )
    assert "still" not in russian and "unchanged" not in russian
