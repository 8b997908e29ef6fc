"""fal's texts echo keys (issue 30, finding 1): none reaches the API, the admin, the staff
chat, the logs or the database.

Every answer the fal emulator can give carries our key and a foreign fal-shaped key: a
refused submit, a status error, a failed job (status and result), a refused result, a
refused cancel, fal's record, the logs of a running job and a webhook. The real gateway,
check, recovery and API paths handle them; then every place a person or a program can
read is searched. The one exception is the raw body of a stored webhook delivery, fal's
signed evidence, which is kept as received (and shown redacted).
"""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.core.management import call_command
from django.test import Client
from django.urls import NoReverseMatch, reverse

from monitoring.fal import signing_keys
from monitoring.models import Training, WebhookDelivery
from notifications import delivery
from notifications.models import Notification
from tests.api_support import body, run_check
from tests.support import WEBHOOK_URL

pytestmark = pytest.mark.django_db

OUR_KEY = "test-key-id:test-key-secret-value"  # tests/settings.py
OUR_SECRET = OUR_KEY.split(":")[1]
FOREIGN_KEY = "0a1b2c3d-1111-2222-3333-444455556666:0123456789abcdef0123456789abcdef"
FOREIGN_SECRET = FOREIGN_KEY.split(":")[1]
PLANTED = f"No user found for Key {OUR_KEY}; also tried {FOREIGN_KEY}"
VALIDATION = {"detail": [{"loc": ["body"], "msg": PLANTED, "type": "value_error"}]}
FLAT = {"detail": PLANTED, "error_type": "internal_error"}


@pytest.fixture(autouse=True)
def quick(settings):
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0
    settings.FAL_PLATFORM_TIMEOUT_SECONDS = 2.0
    settings.FAL_NOT_FOUND_CONFIRM_COUNT = 1
    settings.FAL_NOT_FOUND_CONFIRM_MINUTES = 0
    assert settings.FAL_KEY == OUR_KEY


def leaks(text: str) -> list[str]:
    return [
        secret for secret in (OUR_KEY, OUR_SECRET, FOREIGN_KEY, FOREIGN_SECRET) if secret in text
    ]


def admin_pages(staff: Client) -> dict[str, str]:
    """Every changelist, and the change page of every row, of every model in the admin."""
    pages = {}
    for model in admin.site._registry:
        opts = model._meta
        try:
            changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        except NoReverseMatch:
            continue
        pages[changelist] = staff.get(changelist)
        for pk in model._default_manager.values_list("pk", flat=True)[:50]:
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(pk)])
            pages[url] = staff.get(url)
    for url, response in pages.items():
        assert response.status_code in (200, 302), (url, response.status_code)
    return {url: response.content.decode() for url, response in pages.items()}


def test_a_key_fal_echoes_is_never_stored_shown_sent_or_logged(
    fal, make_api_client, admin_user, telegram, client, caplog
):
    bot = make_api_client(scopes=("trainings:write", "avatars:read"))
    answers: list[str] = []

    def start(name: str, **script) -> dict:
        images = f"https://example.com/{name}.zip"  # what the emulator's script matches
        if script:
            fal.script(images, **script)
        response = bot.post(
            "/api/v1/trainings", body(name=name, images_url=images), key=uuid.uuid4().hex
        )
        answers.append(response.content.decode())
        assert response.status_code == 201, response.content
        return response.json()

    with caplog.at_level(logging.DEBUG):
        # 1. Submits refused: a validation error and a rejected key (a staff alert).
        fal.refuse_next_submit(422, VALIDATION)
        refused = start("refused-422")
        fal.refuse_next_submit(401, {"detail": PLANTED})
        start("refused-401")
        assert refused["training"]["submit"] == "refused"

        # 2. Status errors: fal's trouble (kept as the last check error) and a locked account.
        running = start("status-500", queue_seconds=600)
        locked = start("status-403", queue_seconds=600)
        fal.script(running["training"]["fal_request_id"], status_error=500, error_body=FLAT)
        fal.script(locked["training"]["fal_request_id"], status_error=403, error_body=FLAT)
        # 3. Logs of a running job.
        logging_job = start("logs", queue_seconds=0, run_seconds=600, logs=(PLANTED, "step 2"))
        # 4. A failed job (its status error and its result's 422), and a refused result.
        start("failed-job", error=PLANTED, error_type="value_error")
        start("refused-result", result_error=422, error_body=VALIDATION)
        # 5. fal's record: the job failed while we were down and the queue forgot it.
        fal.drop_webhooks()
        start("from-record", error=PLANTED, queue_forgets_after=0)
        # 6. Cancels refused: fal's trouble (answered to the client) and a rejected key.
        cancel_500 = start("cancel-500", queue_seconds=600)
        cancel_401 = start("cancel-401", queue_seconds=600)
        fal.script(cancel_500["training"]["fal_request_id"], cancel_error=500, error_body=FLAT)
        fal.script(cancel_401["training"]["fal_request_id"], cancel_error=401, error_body=FLAT)

        run_check()
        run_check()
        # Staff re-check a running job from its page: fal's logs come with the answer.
        staff = Client()
        staff.force_login(admin_user)
        avatar_id = logging_job["avatar"]["id"]
        page = {"action": "recheck_now", "_selected_action": avatar_id, "from_avatar_page": "1"}
        assert staff.post("/admin/monitoring/avatar/", page).status_code == 302
        for started in (cancel_500, cancel_401):
            response = bot.post(f"/api/v1/avatars/{started['avatar']['id']}/cancel")
            answers.append(response.content.decode())
            # Refused (409 with fal's reason), or recorded first and refused later (202).
            assert response.status_code in (202, 409), response.content

        # 7. A signed webhook of a failed job (the intake stores it raw, applies it redacted).
        webhooked = start("webhook", error=PLANTED, queue_seconds=600)
        request_id = webhooked["training"]["fal_request_id"]
        fal.finish(request_id, error=PLANTED, error_type="value_error")
        signing_keys.forget()
        raw, headers = fal.webhook_for(request_id)
        assert (
            client.post(
                WEBHOOK_URL, data=raw, content_type="application/json", headers=headers
            ).status_code
            == 200
        )

        # The staff chat: every message, through the real Telegram backend.
        for pk in Notification.objects.values_list("pk", flat=True):
            delivery.deliver(pk)

    # What fal was made to say did happen (the test would prove nothing otherwise).
    training = Training.objects.get(fal_request_id=logging_job["training"]["fal_request_id"])
    assert "[redacted]" in training.logs_tail
    assert "[redacted]" in Training.objects.get(avatar__name="failed-job").error_message
    assert "[redacted]" in Training.objects.get(avatar__name="from-record").error_message
    assert "[redacted]" in Training.objects.get(avatar__name="refused-result").error_message
    assert "[redacted]" in Training.objects.get(avatar__name="status-500").last_check_error
    assert "[redacted]" in Training.objects.get(avatar__name="webhook").error_message
    staff_chat = [message.text for message in telegram.messages]
    assert any("[redacted]" in text for text in staff_chat), staff_chat
    assert WebhookDelivery.objects.filter(body__contains=OUR_KEY).exists()  # kept as received

    # The API.
    for avatar_id in Training.objects.values_list("avatar_id", flat=True):
        answers.append(bot.get(f"/api/v1/avatars/{avatar_id}").content.decode())
    answers.append(bot.get("/api/v1/avatars", limit=200).content.decode())
    assert leaks("\n".join(answers)) == []
    # The admin, every page.
    for url, page in admin_pages(staff).items():
        assert leaks(page) == [], url
    # The staff chat, the logs.
    assert leaks("\n".join(staff_chat)) == []
    assert leaks(caplog.text) == []
    # The database, but for the raw bodies of webhook deliveries.
    dump = io.StringIO()
    call_command("dumpdata", "--natural-foreign", stdout=dump)
    rows = json.loads(dump.getvalue())
    for row in rows:
        if row["model"] == "monitoring.webhookdelivery":
            row["fields"].pop("body")
    assert leaks(json.dumps(rows, ensure_ascii=False)) == []
