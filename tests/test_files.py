"""Kept avatar files (issue 25): copied from fal's CDN into our storage, verified, served.

The real path throughout: trainings start and complete against the fal emulator over
HTTPS (which serves real files at its result URLs), the copy is the django-q2 task
queued on commit, run the way a worker runs it, and the storage is either the
filesystem or a real S3 HTTP server on loopback (moto's server) through boto3 and
django-storages, unmodified.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import uuid
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from monitoring import files, transitions
from monitoring import trainings as training_service
from monitoring.models import (
    Avatar,
    EventSource,
    FileState,
    KeptFile,
    Training,
)
from notifications.models import Notification, NotificationKind
from tests.support import run_queued_monitoring_tasks


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["filesystem", "s3"])
def avatar_storage(request, settings, tmp_path):
    """The avatar_files storage of this test: a fresh directory, or a fresh bucket."""
    if request.param == "filesystem":
        backend = {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "avatar-files")},
        }
    else:
        import boto3

        endpoint = request.getfixturevalue("s3_server")
        bucket = f"avatars-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket)
        backend = {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": bucket,
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
                "access_key": "testing",
                "secret_key": "testing",
                "querystring_auth": True,
                "querystring_expire": settings.AVATAR_FILE_URL_MAX_AGE_SECONDS,
                "signature_version": "s3v4",
                "default_acl": None,
            },
        }
    settings.STORAGES = {**settings.STORAGES, "avatar_files": backend}
    yield request.param


@pytest.fixture
def fal_files(fal, settings):
    """The emulator serving real files at its result URLs, which our rule allows."""
    fal.serve_files = True
    settings.AVATAR_FILES_COPY = True
    settings.FAL_MEDIA_ALLOWED_HOSTS = [*settings.FAL_MEDIA_ALLOWED_HOSTS, fal.media_rule]
    return fal


@pytest.fixture
def completed(make_avatar, fal_files, django_capture_on_commit_callbacks):
    """Start a training on the emulator and let a check complete it: the real path."""

    def make(name: str = "Анна & <Co>") -> Training:
        avatar = make_avatar(name=name)
        started = training_service.start_training(avatar, source=EventSource.COMMAND)
        training = Training.objects.get(pk=started.training.pk)
        with django_capture_on_commit_callbacks(execute=True):
            training_service.recheck([training], source=EventSource.CHECK)
        training.refresh_from_db()
        assert training.outcome == "completed", training.error_message
        return training

    return make


def _kept(training: Training) -> dict[str, KeptFile]:
    return {row.kind: row for row in KeptFile.objects.filter(training=training)}


def _stored_names() -> list[str]:
    """Every object in the storage (final and temporary names)."""
    store = files.storage()
    found: list[str] = []

    def walk(prefix: str) -> None:
        try:
            dirs, names = store.listdir(prefix)
        except FileNotFoundError:
            return
        found.extend(f"{prefix}{name}" for name in names)
        for directory in dirs:
            walk(f"{prefix}{directory}/")

    walk("")
    return sorted(found)


def _fetch(client, url: str) -> tuple[int, bytes, dict]:
    """GET one of our file URLs: through Django for a signed link, over HTTP for S3."""
    if url.startswith("http://testserver"):
        response = client.get(url.removeprefix("http://testserver"))
        body = b"".join(response.streaming_content) if response.streaming else response.content
        return response.status_code, body, dict(response.headers)
    response = requests.get(url, timeout=10)
    return response.status_code, response.content, dict(response.headers)


# --- Copy on completion --------------------------------------------------------------------


def test_a_completed_trainings_files_are_kept_with_their_sha256_and_size(
    avatar_storage, completed, fal_files, client
):
    training = completed()
    # The owner's "ready" message was written with the completion, before any copy.
    assert Notification.objects.filter(training=training, kind=NotificationKind.READY).exists()
    assert {row.state for row in _kept(training).values()} == {FileState.PENDING}

    results = run_queued_monitoring_tasks()

    assert {"lora": "kept", "config": "kept"} in results
    lora = fal_files.file_bytes(training.fal_request_id)
    config = fal_files.file_bytes(training.fal_request_id, "config")
    data = files.files_data(training)
    assert data["state"] == "kept" and data["error"] == ""
    assert data["lora"]["sha256"] == hashlib.sha256(lora).hexdigest()
    assert data["lora"]["size"] == len(lora) == fal_files.file_size
    assert data["config"]["sha256"] == hashlib.sha256(config).hexdigest()
    assert _stored_names() == sorted(row.name for row in _kept(training).values())

    # fal deletes its copy; ours still serves the same bytes.
    fal_files.break_file(training.fal_request_id, "expire")
    assert (
        requests.get(training.lora_url, verify=fal_files.ca_bundle, timeout=10).status_code == 404
    )
    status, body, headers = _fetch(client, data["lora"]["url"])
    assert status == 200 and body == lora
    if avatar_storage == "filesystem":
        assert headers["Content-Length"] == str(len(lora))
        assert headers["ETag"] == f'"{data["lora"]["sha256"]}"'


def test_a_download_that_fails_twice_is_kept_at_the_third_try(avatar_storage, completed, fal_files):
    training = completed()
    fal_files.break_file(training.fal_request_id, "fail", times=2)

    assert run_queued_monitoring_tasks() == [{"lora": "pending", "config": "kept"}]
    row = _kept(training)["lora"]
    assert row.attempts == 1 and "503" in row.last_error
    # The first retry is due within about a minute (the sweep runs every minute).
    assert timedelta(0) < row.next_attempt_at - timezone.now() <= timedelta(seconds=60)
    assert files.sweep() == 0  # not due yet

    for expected in ("pending", "kept"):
        KeptFile.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        assert files.sweep() == 1
        assert run_queued_monitoring_tasks() == [{"lora": expected}]
    row.refresh_from_db()
    assert row.state == FileState.KEPT and row.attempts == 3
    assert row.sha256 == hashlib.sha256(fal_files.file_bytes(training.fal_request_id)).hexdigest()
    # Retries wait longer each time.
    assert files._backoff(1) < files._backoff(2) < files._backoff(3)


@pytest.mark.parametrize("fault", ["truncate", "corrupt"])
def test_a_short_download_is_never_marked_kept(avatar_storage, completed, fal_files, fault):
    """A connection cut short of Content-Length, or fewer bytes than fal's file_size."""
    training = completed()
    fal_files.break_file(training.fal_request_id, fault)

    run_queued_monitoring_tasks()

    row = _kept(training)["lora"]
    assert row.state == FileState.PENDING and row.name == "" and row.sha256 == ""
    assert files.files_data(training)["lora"] is None
    # Neither a final nor a half-written temporary file is left behind.
    assert _stored_names() == [_kept(training)["config"].name]


def test_a_result_url_on_a_foreign_host_is_never_fetched(
    avatar_storage, training_avatar, fal_files, settings, django_capture_on_commit_callbacks
):
    settings.FAL_MEDIA_ALLOWED_HOSTS = ["fal.media", "*.fal.media"]
    avatar, training = training_avatar("req-foreign")
    url = fal_files.file_url("req-foreign")  # the emulator's host: not in the rule
    with django_capture_on_commit_callbacks(execute=True):
        transitions.complete(training, lora_url=url, source=EventSource.STAFF)

    run_queued_monitoring_tasks()

    assert fal_files.file_requests["req-foreign"] == 0
    row = _kept(training)["lora"]
    assert row.state == FileState.FAILED and row.failure == KeptFile.Failure.UNSAFE_URL
    assert Notification.objects.filter(kind=NotificationKind.FILES, training=training).count() == 1


def test_a_redirect_to_another_host_is_not_followed(avatar_storage, completed, fal_files):
    training = completed()
    fal_files.break_file(training.fal_request_id, "redirect")

    run_queued_monitoring_tasks()

    row = _kept(training)["lora"]
    assert row.state == FileState.PENDING and "redirect to another host" in row.last_error


def test_a_file_over_the_limit_is_refused_and_staff_alerted(
    avatar_storage, completed, fal_files, settings
):
    settings.AVATAR_FILE_MAX_BYTES = 1024 * 1024
    fal_files.file_size = 1024 * 1024 + 1
    training = completed(name="Big <one>")

    run_queued_monitoring_tasks()

    row = _kept(training)["lora"]
    assert row.state == FileState.FAILED and row.failure == KeptFile.Failure.TOO_LARGE
    assert fal_files.file_requests[training.fal_request_id] == 1  # only the config
    assert files.files_data(training)["state"] == "failed"
    alert = Notification.objects.get(kind=NotificationKind.FILES, training=training)
    assert f"#{training.avatar_id}" in alert.text and "Big &lt;one&gt;" in alert.text
    assert training.fal_request_id in alert.text
    assert _stored_names() == [_kept(training)["config"].name]


def test_a_file_growing_past_the_limit_while_streamed_is_refused(
    avatar_storage, training_avatar, fal_files, settings, django_capture_on_commit_callbacks
):
    """fal's file_size and Content-Length can be absent or wrong: the bytes are counted."""
    settings.AVATAR_FILE_MAX_BYTES = 1024 * 1024
    fal_files.file_size = 3 * 1024 * 1024
    avatar, training = training_avatar("req-grows")
    with django_capture_on_commit_callbacks(execute=True):
        transitions.complete(
            training, lora_url=fal_files.file_url("req-grows"), source=EventSource.CHECK
        )
    row = _kept(training)["lora"]
    KeptFile.objects.filter(pk=row.pk).update(expected_size=None)

    run_queued_monitoring_tasks()

    row.refresh_from_db()
    assert row.failure == KeptFile.Failure.TOO_LARGE and _stored_names() == []


def test_a_file_gone_at_fal_alerts_staff_once(avatar_storage, completed, fal_files):
    training = completed()
    fal_files.break_file(training.fal_request_id, "expire")

    run_queued_monitoring_tasks()
    files.retry_now(training)
    files.keep(training.pk)

    row = _kept(training)["lora"]
    assert row.state == FileState.FAILED and row.failure == KeptFile.Failure.GONE
    alerts = Notification.objects.filter(kind=NotificationKind.FILES, training=training)
    assert alerts.count() == 1
    assert "переобучить" in alerts.get().text


def test_a_copy_still_failing_after_the_retry_hours_alerts_staff_once(
    avatar_storage, completed, fal_files
):
    training = completed()
    fal_files.break_file(training.fal_request_id, "fail")
    KeptFile.objects.filter(training=training).update(retry_until=timezone.now())

    run_queued_monitoring_tasks()

    row = _kept(training)["lora"]
    assert row.state == FileState.FAILED and row.failure == KeptFile.Failure.GAVE_UP
    alert = Notification.objects.get(kind=NotificationKind.FILES, training=training)
    assert "keep_avatar_files --avatar" in alert.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.parametrize("run", range(3))
def test_two_workers_copying_the_same_training_keep_one_file(
    avatar_storage, completed, fal_files, run
):
    training = completed()
    barrier = threading.Barrier(2)
    results: list[dict] = []

    def worker() -> None:
        try:
            barrier.wait(5)
            results.append(files.keep(training.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    rows = _kept(training)
    assert {row.state for row in rows.values()} == {FileState.KEPT}
    assert _stored_names() == sorted(row.name for row in rows.values())
    # The lease: each file was fetched by one worker only.
    assert fal_files.file_requests[training.fal_request_id] == 2
    assert sorted(results, key=len) and all(set(r.values()) <= {"kept", "busy"} for r in results)


def test_a_copy_interrupted_by_a_crash_is_resumed_and_kept_once(
    avatar_storage, completed, fal_files
):
    training = completed()
    row = _kept(training)["lora"]
    # A worker claimed it and died: its lease runs out, and a temporary file stays.
    KeptFile.objects.filter(pk=row.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    files.storage().save(f"{files.TEMP_DIR}/crashed.part", io.BytesIO(b"half"))

    run_queued_monitoring_tasks()
    files.retry_now(training)
    files.keep(training.pk, due_only=False)  # a second run finds nothing left to do

    rows = _kept(training)
    assert {r.state for r in rows.values()} == {FileState.KEPT}
    names = _stored_names()
    assert [n for n in names if not n.startswith(files.TEMP_DIR)] == sorted(
        r.name for r in rows.values()
    )


# --- Serving ----------------------------------------------------------------------------------


@pytest.fixture
def kept_on_disk(completed, settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "avatar_files": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "avatar-files")},
        },
    }
    training = completed()
    run_queued_monitoring_tasks()
    return training


def test_a_signed_link_with_a_changed_or_expired_signature_is_404(kept_on_disk, client, fal_files):
    row = _kept(kept_on_disk)["lora"]
    url = files.link(row).removeprefix("http://testserver")
    assert client.get(url).status_code == 200

    token = url.split("/")[2]
    changed = url.replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    assert client.get(changed).status_code == 404
    assert client.get(url.replace(row.file_name, "other.bin")).status_code == 404
    expired = files.link(
        row,
        now=timezone.now() - timedelta(seconds=files.settings.AVATAR_FILE_URL_MAX_AGE_SECONDS + 1),
    )
    assert client.get(expired.removeprefix("http://testserver")).status_code == 404
    # A link to a file that was copied again (other bytes) no longer works either.
    KeptFile.objects.filter(pk=row.pk).update(sha256="0" * 64)
    assert client.get(url).status_code == 404


def test_a_signed_link_answers_ranges_and_conditional_requests(kept_on_disk, client, fal_files):
    row = _kept(kept_on_disk)["lora"]
    url = files.link(row).removeprefix("http://testserver")
    whole = fal_files.file_bytes(kept_on_disk.fal_request_id)

    response = client.get(url, HTTP_RANGE="bytes=100-199")
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == whole[100:200]
    assert response["Content-Range"] == f"bytes 100-199/{len(whole)}"
    assert response["Content-Length"] == "100"
    tail = client.get(url, HTTP_RANGE="bytes=-10")
    assert b"".join(tail.streaming_content) == whole[-10:]
    assert client.get(url, HTTP_RANGE=f"bytes={len(whole)}-").status_code == 416
    assert client.get(url, HTTP_IF_NONE_MATCH=f'"{row.sha256}"').status_code == 304
    assert client.head(url)["Content-Length"] == str(len(whole))


def test_production_hands_the_bytes_to_nginx(kept_on_disk, client, settings):
    settings.AVATAR_FILES_X_ACCEL_REDIRECT = "/_avatar-files/"
    row = _kept(kept_on_disk)["lora"]
    response = client.get(files.link(row).removeprefix("http://testserver"))
    assert response.status_code == 200 and response.content == b""
    assert response["X-Accel-Redirect"] == f"/_avatar-files/{row.name}"


def test_the_api_and_check_avatar_db_show_the_kept_files(kept_on_disk, capsys):
    call_command("check_avatar_db", "--json")
    rows = json.loads(capsys.readouterr().out)
    shown = next(r for r in rows if r["id"] == str(kept_on_disk.avatar_id))
    assert shown["files"]["state"] == "kept"
    assert shown["files"]["lora"]["url"].startswith("http://testserver/files/")
    assert shown["lora_url"] == kept_on_disk.lora_url  # fal's, kept as it was

    from monitoring.api import representation

    avatar = Avatar.objects.get(pk=kept_on_disk.avatar_id)
    data = representation.avatar_data(avatar)
    assert data["files"]["lora"]["sha256"] == shown["files"]["lora"]["sha256"]
    assert data["trainings"][0]["files"]["state"] == "kept"
    stored = representation.avatar_data(avatar, links=False)
    assert stored["files"]["lora"]["url"] is None


def test_staff_download_through_the_admin_which_never_shows_a_signed_link(
    kept_on_disk, client, admin_user, django_user_model, fal_files
):
    page = reverse("admin:monitoring_avatar_change", args=[kept_on_disk.avatar_id])
    download = reverse("admin:monitoring_avatar_file", args=[kept_on_disk.avatar_id, "lora"])
    client.force_login(admin_user)
    html = client.get(page).content.decode()
    assert download in html
    assert 'href="/files/' not in html and "testserver/files/" not in html

    response = client.get(download)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == fal_files.file_bytes(kept_on_disk.fal_request_id)
    assert response["Content-Disposition"].startswith("attachment")

    nobody = django_user_model.objects.create_user("nobody", password="x", is_staff=True)
    client.force_login(nobody)
    assert client.get(download).status_code == 403


# --- Lifecycle --------------------------------------------------------------------------------


def test_deleting_the_avatar_deletes_its_files(
    avatar_storage, completed, django_capture_on_commit_callbacks
):
    training = completed()
    run_queued_monitoring_tasks()
    assert len(_stored_names()) == 2

    with django_capture_on_commit_callbacks(execute=True):
        Avatar.objects.filter(pk=training.avatar_id).delete()

    assert _stored_names() == []


def test_prune_deletes_superseded_attempts_files_after_the_configured_days(
    kept_on_disk, settings, django_capture_on_commit_callbacks
):
    from monitoring.ops import retention

    avatar = Avatar.objects.get(pk=kept_on_disk.avatar_id)
    newer = Training.objects.create(
        avatar=avatar,
        attempt=2,
        endpoint=kept_on_disk.endpoint,
        created_at=timezone.now() - timedelta(days=settings.AVATAR_FILES_SUPERSEDED_DAYS - 1),
    )
    Avatar.objects.filter(pk=avatar.pk).update(current_training=newer)
    assert retention.count()["superseded_avatar_files"] == 0

    Training.objects.filter(pk=newer.pk).update(
        created_at=timezone.now() - timedelta(days=settings.AVATAR_FILES_SUPERSEDED_DAYS + 1)
    )
    assert retention.count()["superseded_avatar_files"] == 2
    with django_capture_on_commit_callbacks(execute=True):
        retention.prune()
    assert _stored_names() == [] and not KeptFile.objects.exists()


def test_prune_removes_temporaries_a_crash_left(kept_on_disk):
    from monitoring.ops import retention

    store = files.storage()
    store.save(f"{files.TEMP_DIR}/old.part", io.BytesIO(b"x"))
    import os

    old = (timezone.now() - timedelta(days=2)).timestamp()
    os.utime(store.path(f"{files.TEMP_DIR}/old.part"), (old, old))
    store.save(f"{files.TEMP_DIR}/new.part", io.BytesIO(b"x"))

    assert retention.prune()["avatar_file_temporaries"] == 1
    assert store.exists(f"{files.TEMP_DIR}/new.part")


# --- Backfill ---------------------------------------------------------------------------------


def test_keep_avatar_files_copies_what_completed_before(
    avatar_storage, completed, fal_files, capsys
):
    _first, second, gone = completed("one"), completed("two"), completed("gone")
    run_queued_monitoring_tasks()
    KeptFile.objects.filter(training__in=[second, gone]).delete()  # as before this existed
    fal_files.break_file(gone.fal_request_id, "expire")

    call_command("keep_avatar_files", "--dry-run", "--json")
    assert json.loads(capsys.readouterr().out) == {"would_copy": 2, "already_kept": 1}
    assert not KeptFile.objects.filter(training=second).exists()

    call_command("keep_avatar_files", "--avatar", str(second.avatar_id), "--since", "1", "--json")
    assert json.loads(capsys.readouterr().out) == {
        "kept": 1,
        "already_kept": 0,
        "gone_at_fal": 0,
        "failed": 0,
    }
    call_command("keep_avatar_files", "--json")
    assert json.loads(capsys.readouterr().out) == {
        "kept": 0,
        "already_kept": 2,
        "gone_at_fal": 1,
        "failed": 0,
    }
    assert files.files_data(second)["state"] == "kept"


# --- fal's side ----------------------------------------------------------------------------------


def test_the_submit_carries_the_lifecycle_header_with_the_configured_seconds(
    make_avatar, fal, settings
):
    training_service.start_training(make_avatar(), source=EventSource.COMMAND)
    header = fal.submissions[-1]["headers"]["x-fal-object-lifecycle-preference"]
    assert json.loads(header) == {"expiration_duration_seconds": 2592000}

    settings.FAL_MEDIA_EXPIRATION_SECONDS = 86400
    training_service.start_training(make_avatar(), source=EventSource.COMMAND)
    header = fal.submissions[-1]["headers"]["x-fal-object-lifecycle-preference"]
    assert json.loads(header) == {"expiration_duration_seconds": 86400}

    settings.FAL_MEDIA_EXPIRATION_SECONDS = None
    training_service.start_training(make_avatar(), source=EventSource.COMMAND)
    assert "x-fal-object-lifecycle-preference" not in fal.submissions[-1]["headers"]


def test_an_empty_expiration_setting_turns_the_header_off(monkeypatch):
    from avatarsite.env import env_int_or_off

    monkeypatch.setenv("FAL_MEDIA_EXPIRATION_SECONDS", "")
    assert env_int_or_off("FAL_MEDIA_EXPIRATION_SECONDS", 5) is None
    monkeypatch.setenv("FAL_MEDIA_EXPIRATION_SECONDS", "7200")
    assert env_int_or_off("FAL_MEDIA_EXPIRATION_SECONDS", 5) == 7200
    monkeypatch.delenv("FAL_MEDIA_EXPIRATION_SECONDS")
    assert env_int_or_off("FAL_MEDIA_EXPIRATION_SECONDS", 5) == 5


# --- The bot's API and its event callbacks ------------------------------------------------------


def test_event_callbacks_carry_files_with_links_signed_at_send_time(
    fal_files, make_api_client, receiver, client
):
    from standardwebhooks.webhooks import Webhook

    from monitoring.api import callbacks
    from monitoring.api.models import EventCallback
    from tests.api_support import BODY, run_check

    bot = make_api_client(callback_url=receiver.url)
    answer = bot.post("/api/v1/trainings", BODY, key=uuid.uuid4().hex).json()
    run_check()
    [callback] = EventCallback.objects.all()
    # What is stored holds no link (a secret that expires): the copy is not even made yet.
    assert callback.payload["data"]["files"] == {
        "state": "pending",
        "lora": None,
        "config": None,
        "error": "",
    }
    assert "/files/" not in json.dumps(callback.payload)

    files.keep(int(answer["training"]["id"]))
    assert callbacks.deliver(callback.pk) == "delivered"

    [request] = receiver.requests
    event = Webhook(bot.made.callback_secret).verify(
        request["body"], {k.lower(): v for k, v in request["headers"].items()}
    )
    kept = event["data"]["files"]
    assert kept["state"] == "kept" and event["data"]["trainings"][0]["files"] == kept
    status, body, _headers = _fetch(client, kept["lora"]["url"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == kept["lora"]["sha256"]
    callback.refresh_from_db()
    assert "/files/" not in json.dumps(callback.payload)

    shown = bot.get(f"/api/v1/avatars/{answer['avatar']['id']}").json()
    assert shown["files"]["lora"]["sha256"] == kept["lora"]["sha256"]
    assert shown["files"]["lora"]["url"].startswith("http://testserver/files/")
    assert shown["lora_url"].startswith(fal_files.base_url)  # fal's URL, as it was


def test_nginx_serves_kept_files_from_an_internal_location_only():
    from pathlib import Path

    server = (Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf").read_text()
    block = server.split("location /_avatar-files/ {", 1)[1].split("}", 1)[0]
    assert "internal;" in block and "alias " in block


def test_links_never_reach_the_logs(avatar_storage, completed):
    from avatarsite.log_redaction import redact

    training = completed()
    run_queued_monitoring_tasks()
    url = files.link(_kept(training)["lora"])
    cleaned = redact(f"GET {url} failed")
    secret = (
        url.split("X-Amz-Signature=", 1)[1].split("&")[0]
        if avatar_storage == "s3"
        else url.split("/files/", 1)[1].split("/")[0]
    )
    assert secret not in cleaned and "[redacted]" in cleaned
    # fal's own URLs stay readable.
    assert redact(training.lora_url) == training.lora_url


def test_check_deploy_warns_when_files_are_streamed_from_this_hosts_disk(settings):
    from django.core import checks

    def ids() -> set[str]:
        return {message.id for message in checks.run_checks(include_deployment_checks=True)}

    settings.AVATAR_FILES_S3_BUCKET = None
    settings.AVATAR_FILES_X_ACCEL_REDIRECT = None
    assert "avatarsite.W020" in ids()
    settings.AVATAR_FILES_X_ACCEL_REDIRECT = "/_avatar-files/"
    assert "avatarsite.W020" not in ids()
    assert "avatarsite.W020" not in {m.id for m in checks.run_checks()}


def test_a_copy_whose_task_keeps_being_killed_is_given_up_by_the_sweep(
    avatar_storage, completed, fal_files
):
    """The worker's timeout kills a task before it records anything: the claim counted it."""
    training = completed()
    row = _kept(training)["lora"]
    assert files._claim(row.pk) is not None  # ...and the task dies here
    row.refresh_from_db()
    assert row.attempts == 1 and row.lease_until is not None
    KeptFile.objects.filter(pk=row.pk).update(
        lease_until=timezone.now() - timedelta(seconds=1),
        retry_until=timezone.now() - timedelta(seconds=1),
    )

    files.sweep()
    files.sweep()

    row.refresh_from_db()
    assert row.state == FileState.FAILED and row.failure == KeptFile.Failure.GAVE_UP
    assert Notification.objects.filter(kind=NotificationKind.FILES, training=training).count() == 1


def test_a_failure_to_plan_the_copy_never_undoes_the_completion(
    training_avatar, monkeypatch, django_capture_on_commit_callbacks
):
    def broken(training, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(files, "plan", broken)
    avatar, training = training_avatar("req-broken-plan")
    with django_capture_on_commit_callbacks(execute=True):
        outcome = transitions.complete(
            training, lora_url="https://v3.fal.media/x.safetensors", source=EventSource.CHECK
        )
    assert outcome.changed
    avatar.refresh_from_db()
    assert avatar.status == "completed"
    assert Notification.objects.filter(training=training, kind=NotificationKind.READY).exists()


def test_with_copying_off_files_wait_pending_and_nothing_is_fetched(
    avatar_storage, completed, fal_files, settings
):
    from tests.support import queued_monitoring_tasks

    settings.AVATAR_FILES_COPY = False
    training = completed()
    assert queued_monitoring_tasks() == []
    assert files.keep(training.pk) == {} and files.sweep() == 0
    assert fal_files.file_requests[training.fal_request_id] == 0
    assert files.files_data(training)["state"] == "pending"

    settings.AVATAR_FILES_COPY = True
    assert files.sweep() == 1
    assert run_queued_monitoring_tasks() == [{"lora": "kept", "config": "kept"}]
