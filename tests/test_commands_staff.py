"""manual_status_check and check_fal_status: every flag, bad input, and real exit codes.

fal is the emulator over loopback HTTPS, reached by the real fal-client.
"""

from __future__ import annotations

import json
import uuid
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from fakes.fal_emulator import FOREVER
from monitoring import transitions
from monitoring.models import AvatarEvent, AvatarStatus, EventSource, Training
from monitoring.trainings import start_training
from tests.support import managepy

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def queued(fal, make_avatar):
    """Avatars whose jobs wait in the emulator's queue until the test finishes them."""

    def start(**fields):
        fal.drop_webhooks()
        fal.script(queue_seconds=FOREVER, queue_position=4)
        avatar = make_avatar(**fields)
        outcome = start_training(avatar, source=EventSource.COMMAND)
        assert outcome.training is not None and outcome.training.fal_request_id, outcome
        return avatar, outcome.training

    return start


# --- manual_status_check -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [(), ("--all", "--stuck"), ("--avatar", "1", "--all")],
    ids=["none", "two", "avatar-and-all"],
)
def test_manual_check_wants_exactly_one_selection(db, args):
    with pytest.raises(CommandError, match="exactly one of --avatar ID, --all or --stuck"):
        run("manual_status_check", *args)


def test_manual_check_rejects_an_unknown_avatar_id_and_checks_nothing(fal, queued):
    avatar, training = queued()

    with pytest.raises(CommandError, match="Unknown avatar id\\(s\\): 999999"):
        run("manual_status_check", "--avatar", str(avatar.pk), "--avatar", "999999")

    assert fal.status_calls[training.fal_request_id] == 0


def test_manual_check_of_one_avatar_prints_what_changed(fal, queued):
    avatar, training = queued()
    fal.finish(training.fal_request_id)

    out, _err = run("manual_status_check", "--avatar", str(avatar.pk))

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert f"avatar {avatar.pk} (training {training.pk}): IN_QUEUE → completed" in out
    assert "1 checked, 1 changed, 0 errors" in out


def test_manual_check_takes_the_avatar_option_repeatedly(fal, queued):
    first, t1 = queued(name="First")
    second, t2 = queued(name="Second")
    queued(name="Not asked for")
    fal.finish(t1.fal_request_id, error="Could not find faces", error_type="face_detection_error")

    out, _err = run("manual_status_check", "--avatar", str(first.pk), "--avatar", str(second.pk))

    first.refresh_from_db()
    assert first.status == AvatarStatus.ERROR
    assert "2 checked, 1 changed, 0 errors" in out
    assert sum(fal.status_calls.values()) >= 2
    assert len([rid for rid, n in fal.status_calls.items() if n]) == 2


def test_manual_check_skips_an_avatar_with_nothing_running(make_avatar):
    idle = make_avatar()

    out, _err = run("manual_status_check", "--avatar", str(idle.pk))

    assert f"avatar {idle.pk}: no active training (status ready_for_training), skipped" in out
    assert "Nothing to check." in out


def test_manual_check_all_checks_every_active_training(fal, queued):
    trainings = [queued(name=f"A{n}")[1] for n in range(3)]
    fal.finish(trainings[0].fal_request_id)

    out, _err = run("manual_status_check", "--all", "-v", "2")

    assert all(fal.status_calls[t.fal_request_id] >= 1 for t in trainings)
    assert "3 checked, 1 changed, 0 errors" in out
    assert out.count("unchanged (IN_QUEUE)") == 2


def test_manual_check_stuck_checks_only_stuck_trainings(fal, queued):
    _a, stuck = queued(name="Stuck")
    _b, fine = queued(name="Fine")
    transitions.flag_stuck(stuck, reason="in queue too long")

    out, _err = run("manual_status_check", "--stuck")

    assert fal.status_calls[stuck.fal_request_id] >= 1
    assert fal.status_calls[fine.fal_request_id] == 0
    assert "1 checked, 0 changed, 0 errors" in out


def test_manual_check_dry_run_reads_fal_and_writes_nothing(fal, queued):
    avatar, training = queued()
    fal.finish(training.fal_request_id)
    events_before = AvatarEvent.objects.count()

    out, _err = run("manual_status_check", "--avatar", str(avatar.pk), "--dry-run")

    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.TRAINING
    assert AvatarEvent.objects.count() == events_before
    assert fal.status_calls[training.fal_request_id] >= 1
    assert "[dry run]" in out and "IN_QUEUE → COMPLETED" in out
    assert "(dry run: nothing written)" in out


def test_manual_check_shows_progress_on_long_runs(fal, queued):
    for n in range(3):
        queued(name=f"P{n}")

    _out, err = run("manual_status_check", "--all", "--batch-size", "1")

    assert "checked 1 of 3" in err and "checked 3 of 3" in err


def test_manual_check_fails_when_fal_errors(fal, queued):
    avatar, training = queued()
    fal.script(training.fal_request_id, status_error=500)

    with pytest.raises(CommandError, match="1 of 1 checks failed"):
        run("manual_status_check", "--avatar", str(avatar.pk))

    training.refresh_from_db()
    assert training.check_failures == 1 and training.last_check_error


@pytest.mark.django_db(transaction=True)
def test_manual_check_exits_non_zero_for_an_unknown_avatar_in_a_real_process():
    result = managepy("manual_status_check", "--avatar", "424242", database=True)

    assert result.returncode == 1
    assert "CommandError: Unknown avatar id(s): 424242" in result.stderr


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("manual_status_check", ("--avatar", "--all", "--stuck", "--dry-run")),
        ("check_fal_status", ("REQUEST_ID", "request_id", "--endpoint", "--logs", "--result")),
        ("check_worker_heartbeat", ("--max-age",)),
        ("prune", ("--dry-run",)),
    ],
)
def test_each_staff_command_explains_itself(command, flags):
    result = managepy(command, "--help")

    assert result.returncode == 0, result.stderr
    assert any(flag in result.stdout for flag in flags)
    for flag in flags:
        if flag.startswith("--"):
            assert flag in result.stdout


# --- check_fal_status ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id", ["req-1", "https://queue.fal.run/x/requests/abc", "'; drop table"]
)
def test_check_fal_status_rejects_a_malformed_request_id(fal, request_id, db):
    with pytest.raises(CommandError, match="is not a fal request id"):
        run("check_fal_status", request_id)

    assert sum(fal.status_calls.values()) == 0


def test_check_fal_status_rejects_a_malformed_endpoint(fal, db):
    with pytest.raises(CommandError, match="is not a fal endpoint"):
        run("check_fal_status", str(uuid.uuid4()), "--endpoint", "fal-ai")


def test_check_fal_status_exits_1_on_malformed_input_in_a_real_process():
    result = managepy("check_fal_status", "not-a-request-id")

    assert result.returncode == 1
    assert "is not a fal request id" in result.stderr


def test_check_fal_status_says_when_fal_does_not_know_the_request(fal, db):
    request_id = str(uuid.uuid4())

    with pytest.raises(CommandError, match=f"fal does not know request {request_id}"):
        run("check_fal_status", request_id)


def test_check_fal_status_prints_the_raw_status_of_a_known_request(fal, queued):
    avatar, training = queued()

    out, _err = run("check_fal_status", training.fal_request_id)

    assert f"Known here: avatar {avatar.pk}, attempt 1" in out
    status = json.loads(out[out.index("{") :])["status"]
    assert status["status"] == "IN_QUEUE" and status["queue_position"] == 4
    assert "logs" not in status


def test_check_fal_status_with_logs_and_result_of_a_completed_request(fal, queued):
    _avatar, training = queued()
    fal.finish(training.fal_request_id)

    out, _err = run("check_fal_status", training.fal_request_id, "--logs", "--result")

    assert '"status": "COMPLETED"' in out
    assert '"logs"' in out
    assert '"result"' in out and "diffusers_lora_file" in out
    # A read-only command: the avatar is still training until the monitor applies it.
    assert Training.objects.get(pk=training.pk).finished_at is None


def test_check_fal_status_result_of_a_failed_or_unfinished_request(fal, queued):
    _a, failed = queued(name="Failed")
    _b, waiting = queued(name="Waiting")
    fal.finish(
        failed.fal_request_id, error="Could not find faces", error_type="face_detection_error"
    )

    failed_out, _err = run("check_fal_status", failed.fal_request_id, "--result")
    waiting_out, _err = run("check_fal_status", waiting.fal_request_id, "--result")

    assert "No result: the job failed on fal" in failed_out and "Could not find faces" in failed_out
    assert "No result yet: the request is IN_QUEUE" in waiting_out


def test_check_fal_status_works_for_a_request_we_do_not_know(fal, queued):
    _avatar, training = queued()
    theirs = training.fal_request_id
    Training.objects.filter(pk=training.pk).update(fal_request_id=str(uuid.uuid4()))

    out, _err = run("check_fal_status", theirs, "--endpoint", "fal-ai/flux-lora-portrait-trainer")

    assert "Not a request of this monitor" in out
    assert '"status": "IN_QUEUE"' in out


def test_check_fal_status_reports_a_rejected_key_without_showing_it(fal, queued, settings):
    _avatar, training = queued()
    fal.expected_key = "another-key-id:another-secret"

    with pytest.raises(CommandError) as raised:
        run("check_fal_status", training.fal_request_id)

    message = str(raised.value)
    assert "fal rejected our key (401)" in message
    assert settings.FAL_KEY.split(":")[1] not in message
