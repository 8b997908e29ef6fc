"""Out-of-range and over-long command options: a clear CommandError, a non-zero exit, and
nothing written (no owner, no avatar, no call to fal)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from monitoring.models import Avatar, Owner, Training
from tests.support import managepy

pytestmark = pytest.mark.django_db

GOOD = {
    "--owner-telegram-id": "555000111",
    "--name": "Summer look",
    "--images-url": "https://example.com/photos.zip",
    "--trigger": "ohwx",
}


def _start(**changes: str) -> list[str]:
    options = {**GOOD, **changes}
    return [item for pair in options.items() for item in pair]


def _nothing_written() -> bool:
    return not (Owner.objects.exists() or Avatar.objects.exists() or Training.objects.exists())


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--owner-telegram-id", str(10**30), "out of range"),
        ("--owner-telegram-id", "0", "out of range"),
        ("--owner-telegram-id", "-5", "out of range"),
        ("--owner-telegram-id", "12abc", "not a whole number"),
        ("--name", "n" * 129, "129 characters, at most 128"),
        ("--name", "   ", "must not be empty"),
        ("--name", "two\nlines", "one line"),
        ("--trigger", "t" * 500, "at most"),
        ("--images-url", "https://example.com/" + "p" * 3000, "at most 2048"),
    ],
)
def test_start_training_refuses_bad_input_and_writes_nothing(fal, option, value, reason):
    with pytest.raises(CommandError, match=f"{option}.*{reason}"):
        call_command("start_training", *_start(**{option: value}))

    assert _nothing_written()
    assert not fal.jobs  # fal was never asked


def test_a_telegram_id_error_says_what_a_telegram_id_is(fal):
    with pytest.raises(CommandError, match="positive 64-bit integer"):
        call_command("start_training", *_start(**{"--owner-telegram-id": "-5"}))


def test_start_training_refuses_an_avatar_id_beyond_64_bits(fal):
    with pytest.raises(CommandError, match="--avatar.*out of range"):
        call_command("start_training", "--avatar", str(10**30))


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--limit", str(10**30)), "--limit.*out of range"),
        (("--limit", "0"), "--limit.*out of range"),
        (("--owner", str(10**30)), "--owner.*positive 64-bit integer"),
        (("--owner", "@" + "u" * 100), "--owner.*at most 65"),
    ],
)
def test_check_avatar_db_refuses_out_of_range_input(args, reason):
    with pytest.raises(CommandError, match=reason):
        call_command("check_avatar_db", *args)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--avatar", str(10**30)), "--avatar.*out of range"),
        (("--avatar", "-1"), "--avatar.*out of range"),
        (("--all", "--batch-size", str(10**30)), "--batch-size.*out of range"),
        (("--all", "--batch-size", "0"), "--batch-size.*out of range"),
    ],
)
def test_manual_status_check_refuses_out_of_range_input(fal, args, reason):
    with pytest.raises(CommandError, match=reason):
        call_command("manual_status_check", *args)

    assert not fal.status_calls


def test_check_fal_status_refuses_an_over_long_endpoint_without_asking_fal(fal):
    with pytest.raises(CommandError, match="--endpoint.*at most 200"):
        call_command(
            "check_fal_status",
            "764cabcf-b745-4b3e-ae38-1200304cf45b",
            "--endpoint",
            "a/" + "b" * 300,
        )

    assert not fal.status_calls


@pytest.mark.django_db(transaction=True)
def test_on_the_command_line_bad_input_exits_non_zero_with_the_reason_and_no_traceback():
    result = managepy(
        "start_training", *_start(**{"--owner-telegram-id": str(10**30)}), database=True
    )

    assert result.returncode != 0
    assert "--owner-telegram-id" in result.stderr and "out of range" in result.stderr
    assert "Traceback" not in result.stderr
    assert _nothing_written()
