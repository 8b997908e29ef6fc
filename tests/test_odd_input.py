"""Characters PostgreSQL refuses, numbers JSON cannot carry, and ids that are not numbers
(issue 30, finding 6): a clear 4xx or CommandError naming the field, and nothing written.
"""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from monitoring.api.models import ApiClient, IdempotencyKey
from monitoring.models import Avatar, AvatarStatus, Owner, Training
from tests.api_support import body

pytestmark = pytest.mark.django_db


def nothing_written() -> bool:
    return not (
        Owner.objects.exists()
        or Avatar.objects.exists()
        or Training.objects.exists()
        or IdempotencyKey.objects.exists()
    )


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"name": "Anna\x00"}, "name", "NUL"),
        ({"trigger": "ohwx\x00woman"}, "trigger", "NUL"),
        ({"images_url": "https://example.com/a\x00.zip"}, "images_url", "NUL"),
        ({"settings": {"steps\x00": 5}}, "settings", "NUL"),
        ({"settings": {"note": "a\x00b"}}, "settings", "NUL"),
        ({"settings": {"nested": [{"deep": "\x00"}]}}, "settings", "NUL"),
        ({"settings": {"note": "\ud800"}}, "settings", "not UTF-8"),
    ],
)
def test_a_character_the_database_refuses_is_a_422_naming_the_field(
    fal, bot, changes, field, reason
):
    response = bot.post("/api/v1/trainings", raw=json.dumps(body(**changes)), key="odd")

    assert response.status_code == 422, response.content
    answer = response.json()
    assert answer["error"] == "invalid" and reason in answer["fields"][field], answer
    assert nothing_written() and fal.submissions == []


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity"])
def test_a_number_json_cannot_carry_in_the_settings_is_a_422(fal, bot, number):
    raw = json.dumps(body()).replace('"steps": 500', f'"steps": {number}')

    response = bot.post("/api/v1/trainings", raw=raw, key="odd")

    assert response.status_code == 422, response.content
    assert "finite number" in response.json()["fields"]["settings"]
    assert nothing_written() and fal.submissions == []


def test_adopt_refuses_a_nul_in_the_request_id(fal, bot):
    response = bot.post(
        "/api/v1/trainings/adopt",
        {"request_id": "r\x00", "endpoint": "fal-ai/x", "owner": {"telegram_id": 5}, "name": "n"},
    )

    assert response.status_code == 422 and "request_id" in response.json()["fields"]
    assert nothing_written()


def test_a_nul_in_an_api_path_is_answered_and_the_call_still_logged(bot):
    response = bot.get("/api/v1/avatars/1%00")

    assert response.status_code in (404, 422)
    assert ApiClient.objects.get(pk=bot.client.pk).calls.get().path == "/api/v1/avatars/1\ufffd"


# --- commands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "arguments", "option"),
    [
        ("adopt_training", ["--request-id", "r\x00", "--endpoint", "fal-ai/x"], "--request-id"),
        ("adopt_training", ["--request-id", "r", "--endpoint", "fal-ai/\udcff"], "--endpoint"),
        ("create_api_client", ["--name", "bot\x00", "--scopes", "avatars:read"], "--name"),
        (
            "start_training",
            [
                "--owner-telegram-id",
                "5",
                "--name",
                "caf\udce9",
                "--images-url",
                "https://e/a.zip",
                "--trigger",
                "t",
            ],
            "--name",
        ),
    ],
)
def test_commands_refuse_what_the_database_cannot_store_naming_the_option(
    fal, command, arguments, option
):
    with pytest.raises(CommandError, match=f"{option}: must"):
        call_command(command, *arguments)

    assert nothing_written() and not ApiClient.objects.exists()
    assert not fal.jobs


@pytest.mark.parametrize(
    ("command", "arguments", "option"),
    [
        ("adopt_training", ["--request-id", "r", "--avatar", str(2**63)], "--avatar"),
        (
            "adopt_training",
            ["--request-id", "r", "--owner-telegram-id", "-5"],
            "--owner-telegram-id",
        ),
        ("keep_avatar_files", ["--avatar", "99999999999999999999"], "--avatar"),
        ("keep_avatar_files", ["--since", "0"], "--since"),
    ],
)
def test_ids_the_database_cannot_hold_are_refused_naming_the_option(
    fal, command, arguments, option
):
    with pytest.raises(CommandError, match=f"{option}: .*(out of range|positive)"):
        call_command(command, *arguments)

    assert nothing_written() and not fal.jobs


def test_a_line_of_the_adopt_file_with_a_nul_is_refused_alone(fal, tmp_path, capsys):
    lines = tmp_path / "requests.jsonl"
    lines.write_text(
        json.dumps({"request_id": "r\u0000", "endpoint": "fal-ai/x", "owner_telegram_id": 5}) + "\n"
    )

    with pytest.raises(CommandError, match="1 line"):
        call_command("adopt_training", "--from-file", str(lines))

    assert "request_id: must not contain the NUL" in capsys.readouterr().out
    assert nothing_written()


# --- the admin ------------------------------------------------------------------------------


@pytest.fixture
def staff(admin_user):
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    return client


@pytest.mark.parametrize(
    "url",
    [
        "/admin/monitoring/avatar/abc/change/",
        "/admin/monitoring/avatar/1%00/change/",
        "/admin/monitoring/avatar/99999999999999999999999/change/",
        "/admin/notifications/notification/abc/change/",
        "/admin/monitoring/training/abc/change/",
        "/admin/api/eventcallback/abc/change/",
    ],
)
def test_a_non_numeric_id_in_an_admin_url_is_a_404(staff, url):
    assert staff.get(url).status_code == 404
    assert staff.post(url, {}).status_code == 404


@pytest.mark.parametrize("action", ["retrain", "cancel_training", "mark_failed", "recheck"])
def test_an_action_post_naming_a_non_numeric_id_is_a_400_and_changes_nothing(
    staff, training_avatar, action
):
    avatar, _training = training_avatar()

    response = staff.post(
        "/admin/monitoring/avatar/",
        {"action": action, "_selected_action": [str(avatar.pk), "abc"], "confirmed": "yes"},
    )

    assert response.status_code == 400
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
