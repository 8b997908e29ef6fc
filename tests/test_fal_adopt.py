"""Cut-over and audit (issue 16): adopt fal requests started elsewhere, reconcile_fal.

End to end against the fal emulator (queue and record), commands called in-process.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.utils import timezone

from monitoring import tasks
from monitoring.fal import payloads
from monitoring.models import (
    Avatar,
    AvatarEvent,
    AvatarStatus,
    EventSource,
    FalStatus,
    Owner,
    Training,
    UnknownFalRequest,
)
from monitoring.ops import schedules
from monitoring.trainings import AdoptRefused, adopt_training, start_training
from notifications.models import Notification, NotificationKind
from tests.api_support import run_check
from tests.fixtures_fal import submit_directly
from tests.support import owner_messages

pytestmark = pytest.mark.django_db

PORTRAIT = payloads.ENDPOINTS["portrait"]
STYLE = payloads.ENDPOINTS["style"]
INPUT = {"images_data_url": "https://old-system.example/photos-1.zip", "trigger_phrase": "ohwx"}


@pytest.fixture(autouse=True)
def short_calls(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.FAL_PLATFORM_TIMEOUT_SECONDS = 2.0


def adopt(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("adopt_training", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def everything() -> tuple[int, ...]:
    return (
        Owner.objects.count(),
        Avatar.objects.count(),
        Training.objects.count(),
        AvatarEvent.objects.count(),
        Notification.objects.count(),
    )


# --- adopt_training ----------------------------------------------------------------------------


def test_adopting_one_request_twice_leaves_one_training_and_says_so(fal):
    request_id = submit_directly(fal, PORTRAIT, INPUT)
    args = ("--request-id", request_id, "--endpoint", PORTRAIT, "--owner-telegram-id", "555")
    out, _ = adopt(*args, "--name", "Old avatar", "--json")
    first = json.loads(out)
    assert set(first) == {"id", "fal_request_id", "status", "adopted"}
    assert first["fal_request_id"] == request_id and first["adopted"] is True

    out, _ = adopt(*args, "--name", "Old avatar", "--json")
    second = json.loads(out)
    assert second == {**first, "adopted": False}
    assert Training.objects.filter(fal_request_id=request_id).count() == 1
    assert Avatar.objects.count() == 1


def test_an_adopted_running_job_is_followed_and_its_owner_told_once(fal, caplog):
    fal.script(queue_seconds=600)
    request_id = submit_directly(
        fal, STYLE, {"images_data_url": "https://x/s.zip", "trigger_word": "st"}
    )
    with caplog.at_level(logging.INFO, logger="monitoring"):
        out, _ = adopt(
            "--request-id",
            request_id,
            "--endpoint",
            STYLE,
            "--owner-telegram-id",
            "556",
            "--name",
            "Running",
            "--owner-language",
            "en",
            "--json",
        )
    avatar = Avatar.objects.get(pk=json.loads(out)["id"])
    training = avatar.current_training
    assert avatar.status == AvatarStatus.TRAINING and avatar.training_type == "style"
    assert training.fal_status == FalStatus.IN_QUEUE and training.next_check_at <= timezone.now()
    assert avatar.owner.language == "en"
    assert f"✅ Мониторинг запущен для аватара {avatar.pk}" in caplog.text

    fal.finish(request_id)
    run_check()
    run_check()
    avatar.refresh_from_db()
    assert avatar.status == AvatarStatus.COMPLETED
    assert owner_messages(avatar) == [NotificationKind.READY]


@pytest.mark.parametrize("notify", [False, True])
def test_an_adopted_finished_job_completes_and_tells_its_owner_only_with_notify(fal, notify):
    request_id = submit_directly(fal, PORTRAIT, INPUT)
    out, _ = adopt(
        "--request-id",
        request_id,
        "--endpoint",
        PORTRAIT,
        "--owner-telegram-id",
        "557",
        "--name",
        "Done",
        "--json",
        *(["--notify"] if notify else []),
    )
    answer = json.loads(out)
    avatar = Avatar.objects.get(pk=answer["id"])
    assert answer["status"] == AvatarStatus.COMPLETED == avatar.status
    assert avatar.current_training.lora_url.endswith(".safetensors")
    # What fal's record kept of the input fills the avatar in.
    assert (avatar.images_url, avatar.trigger_word) == (INPUT["images_data_url"], "ohwx")
    assert owner_messages(avatar) == ([NotificationKind.READY] if notify else [])


def test_an_adopted_job_the_queue_forgot_is_finished_from_fals_record(fal):
    fal.script(queue_forgets_after=0, error="No faces found", error_type="face_error")
    request_id = submit_directly(fal, PORTRAIT, INPUT)
    result = adopt_training(
        request_id=request_id,
        endpoint=PORTRAIT,
        owner_telegram_id=558,
        name="Forgotten",
        source=EventSource.COMMAND,
    )
    assert result.adopted and result.avatar.status == AvatarStatus.ERROR
    assert result.training.error_message == "No faces found"
    assert owner_messages(result.avatar) == []


def test_an_unknown_request_id_is_refused_and_nothing_is_written(fal):
    before = everything()
    with pytest.raises(CommandError, match="neither fal's queue nor its record knows"):
        adopt(
            "--request-id",
            "0b9d-no-such-request",
            "--endpoint",
            PORTRAIT,
            "--owner-telegram-id",
            "559",
            "--name",
            "Ghost",
        )
    assert everything() == before


def test_adopting_into_an_existing_avatar(fal, make_avatar):
    avatar = make_avatar(ready=False)
    request_id = submit_directly(fal, PORTRAIT, INPUT)
    result = adopt_training(
        request_id=request_id, endpoint=PORTRAIT, avatar=avatar, source=EventSource.COMMAND
    )
    assert result.avatar.pk == avatar.pk and result.avatar.status == AvatarStatus.COMPLETED
    with pytest.raises(AdoptRefused, match="is completed"):
        adopt_training(
            request_id=submit_directly(fal, PORTRAIT, INPUT),
            endpoint=PORTRAIT,
            avatar=avatar,
            source=EventSource.COMMAND,
        )


def test_a_bulk_file_adopts_the_good_lines_and_reports_each_bad_one(fal, tmp_path):
    # Each line asks fal on its own: ten good ones among the bad say the same as many.
    lines = []
    for number in range(10):
        request_id = submit_directly(
            fal, PORTRAIT, {**INPUT, "images_data_url": f"https://x/{number}.zip"}
        )
        lines.append(
            json.dumps(
                {
                    "request_id": request_id,
                    "endpoint": PORTRAIT,
                    "owner_telegram_id": 7000 + number,
                    "name": f"Avatar {number}",
                    "created_at": "2026-11-30T10:00:00+00:00",
                }
            )
        )
    bad = [
        "{not json",
        json.dumps(
            {
                "request_id": "no-such-request",
                "endpoint": PORTRAIT,
                "owner_telegram_id": 1,
                "name": "x",
            }
        ),
        json.dumps(
            {
                "request_id": "abc",
                "endpoint": "fal-ai/something-else",
                "owner_telegram_id": 1,
                "name": "x",
            }
        ),
        json.dumps({"request_id": "abc", "endpoint": PORTRAIT, "owner_telegram_id": 1}),
        json.dumps(
            {"request_id": "abc", "endpoint": PORTRAIT, "owner_telegram_id": -3, "name": "x"}
        ),
    ]
    for position, line in zip((3, 5, 7, 9, 11), bad, strict=True):
        lines.insert(position, line)
    path = tmp_path / "cutover.jsonl"
    path.write_text("\n".join(lines) + "\n")

    before = everything()
    with pytest.raises(CommandError, match="5 line"):
        adopt("--from-file", str(path), "--dry-run")
    assert everything() == before  # a dry run writes nothing

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="5 line"):
        call_command("adopt_training", "--from-file", str(path), "--json", stdout=out, stderr=err)
    summary = json.loads(out.getvalue())
    assert len(summary["adopted"]) == 10 and summary["already_known"] == []
    assert [r["line"] for r in summary["refused"]] == [4, 6, 8, 10, 12]
    reasons = " | ".join(r["reason"] for r in summary["refused"])
    assert "not JSON" in reasons and "neither fal's queue nor its record" in reasons
    assert "endpoint must be one of our trainers" in reasons and "positive" in reasons
    assert "line 4: refused" in err.getvalue()  # progress on stderr
    assert Training.objects.count() == 10
    assert Avatar.objects.filter(created_at__date="2026-11-30").count() == 10

    out, _ = io.StringIO(), None
    with pytest.raises(CommandError):
        call_command("adopt_training", "--from-file", str(path), stdout=out, stderr=io.StringIO())
    assert "0 adopted, 10 already known, 5 refused" in out.getvalue()


# --- The admin page ---------------------------------------------------------------------------


def test_the_admin_adopt_page_is_for_operators(fal, client):
    request_id = submit_directly(fal, PORTRAIT, INPUT)
    support = User.objects.create_user("support", password="pw", is_staff=True)
    client.force_login(support)
    assert client.get("/admin/monitoring/unknownfalrequest/adopt/").status_code == 403
    form = {"request_id": request_id, "endpoint": PORTRAIT, "owner_telegram_id": 560, "name": "A"}
    assert client.post("/admin/monitoring/unknownfalrequest/adopt/", form).status_code == 403
    assert not Training.objects.exists()

    operator = User.objects.create_user("operator", password="pw", is_staff=True)
    operator.user_permissions.add(
        Permission.objects.get(codename="adopt_training"),
        Permission.objects.get(codename="view_unknownfalrequest"),
    )
    client.force_login(operator)
    page = client.get(f"/admin/monitoring/unknownfalrequest/adopt/?request_id={request_id}")
    assert page.status_code == 200 and request_id in page.content.decode()
    refused = client.post(
        "/admin/monitoring/unknownfalrequest/adopt/", {**form, "request_id": "nope-123"}
    )
    assert refused.status_code == 400 and "neither fal" in refused.content.decode()
    response = client.post("/admin/monitoring/unknownfalrequest/adopt/", form)
    training = Training.objects.get(fal_request_id=request_id)
    assert response.status_code == 302 and str(training.avatar_id) in response["Location"]
    event = AvatarEvent.objects.filter(training=training, actor=operator)
    assert event.exists()


# --- reconcile_fal ------------------------------------------------------------------------------


def test_reconcile_finds_a_job_submitted_outside_the_monitor_and_a_stale_training(
    fal, make_avatar, client
):
    fal.drop_webhooks()
    ours = start_training(make_avatar(), source=EventSource.COMMAND).training  # ends at once
    Training.objects.filter(pk=ours.pk).update(next_check_at=timezone.now() + timedelta(hours=1))
    outsider = submit_directly(
        fal, STYLE, {"images_data_url": "https://x/o.zip", "trigger_word": "o"}
    )

    out = io.StringIO()
    call_command("reconcile_fal", "--dry-run", "--json", stdout=out)
    dry = json.loads(out.getvalue())
    assert [u["request_id"] for u in dry["unknown_to_us"]] == [outsider]
    assert [f["request_id"] for f in dry["finished_now"]] == [ours.fal_request_id]
    assert not UnknownFalRequest.objects.exists()
    assert Training.objects.get(pk=ours.pk).finished_at is None  # dry run: nothing finished
    assert not Notification.objects.exists()

    out = io.StringIO()
    call_command("reconcile_fal", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert set(report) == {"checked", "unknown_to_us", "finished_now"}
    assert report["checked"] == 2
    (unknown,) = report["unknown_to_us"]
    assert unknown["request_id"] == outsider and unknown["endpoint_id"] == STYLE
    assert unknown["status_code"] == 200 and unknown["ended_at"]
    assert report["finished_now"] == [
        {"request_id": ours.fal_request_id, "avatar_id": ours.avatar_id, "status": "completed"}
    ]
    ours.refresh_from_db()
    assert ours.outcome == "completed"
    assert owner_messages(ours.avatar) == [NotificationKind.READY]
    alert = Notification.objects.get(kind=NotificationKind.FAL_RECORD)
    assert outsider in alert.text
    assert UnknownFalRequest.objects.get().request_id == outsider

    call_command("reconcile_fal", "--json", stdout=io.StringIO())  # the same set: no new alert
    assert Notification.objects.filter(kind=NotificationKind.FAL_RECORD).count() == 1

    staff = User.objects.create_superuser("boss", password="pw")
    client.force_login(staff)
    listing = client.get("/admin/monitoring/unknownfalrequest/").content.decode()
    assert outsider in listing and f"request_id={outsider}" in listing
    assert "/admin/monitoring/unknownfalrequest/adopt/" in listing  # "Adopt a fal request"

    adopt_training(
        request_id=outsider, endpoint=STYLE, owner_telegram_id=561, name="O", source="command"
    )
    assert UnknownFalRequest.objects.get().adopted_training is not None


def test_reconcile_refuses_when_fals_record_cannot_be_read(fal):
    fal.fail_platform(503)
    with pytest.raises(CommandError, match="could not be read"):
        call_command("reconcile_fal", "--json", stdout=io.StringIO())
    assert tasks.reconcile_fal()["error"]


def test_reconcile_runs_daily():
    from django_q.models import Schedule

    schedules.ensure_schedules()
    schedule = Schedule.objects.get(name=schedules.RECONCILE)
    assert (schedule.func, schedule.schedule_type) == ("monitoring.tasks.reconcile_fal", "D")


def test_adopt_is_offered_to_operators_on_the_avatar_list_and_the_index(client):
    from django.contrib.auth.models import Group

    from monitoring import roles

    for role, offered in ((roles.OPERATORS, True), (roles.SUPPORT, False)):
        user = User.objects.create_user(f"u-{role}", password="pw", is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        client.force_login(user)
        for page in ("/admin/monitoring/avatar/", "/admin/"):
            html = client.get(page).content.decode()
            assert ('href="/admin/monitoring/unknownfalrequest/adopt/"' in html) is offered, (
                role,
                page,
            )


def test_the_adopt_page_preselects_the_endpoint_fal_knows_and_shows_one_error(fal, admin_client):
    request_id = submit_directly(fal, STYLE, {"images_data_url": "https://x/s.zip"})
    page = admin_client.get(f"/admin/monitoring/unknownfalrequest/adopt/?request_id={request_id}")
    assert page.context["form"].initial["endpoint"] == STYLE
    html = page.content.decode()
    assert 'class="form-row' in html and "fieldset" in html  # Django's form layout
    assert f'value="{request_id}"' in html and 'size="48"' in html

    # Left to fal: the endpoint that knows the request is used.
    adopted = admin_client.post(
        "/admin/monitoring/unknownfalrequest/adopt/",
        {"request_id": request_id, "endpoint": "", "owner_telegram_id": 561, "name": "S"},
    )
    assert adopted.status_code == 302
    assert Training.objects.get(fal_request_id=request_id).endpoint == STYLE

    refused = admin_client.post(
        "/admin/monitoring/unknownfalrequest/adopt/",
        {"request_id": "nope-456", "endpoint": PORTRAIT, "owner_telegram_id": 561, "name": "S"},
    )
    assert refused.status_code == 400
    assert refused.content.decode().count("neither fal") == 1
    unknown = admin_client.post(
        "/admin/monitoring/unknownfalrequest/adopt/",
        {"request_id": "nope-789", "endpoint": "", "owner_telegram_id": 561, "name": "S"},
    )
    assert unknown.content.decode().count("choose the endpoint") == 1
