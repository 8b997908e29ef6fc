"""One rule for the URLs fal hands us (payloads.check_media_url), on every completing path.

Not https: the training fails and staff are alerted. https elsewhere than fal's
storage: flagged stuck for staff with the URL shown. The owner never hears "ready".
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fakes.fal_signing import delivery_body
from monitoring import tasks
from monitoring.fal.payloads import MediaUrl, check_media_url
from monitoring.models import AvatarStatus, EventSource, Training
from monitoring.trainings import start_training
from notifications.models import Audience, Notification, NotificationKind
from tests.api_support import give

pytestmark = pytest.mark.django_db

JAVASCRIPT = "javascript:alert(document.cookie)"
FOREIGN = "https://files.evil.example/lora.safetensors"
GOOD = "https://v3.fal.media/files/demo/x/pytorch_lora_weights.safetensors"


@pytest.mark.parametrize(
    ("url", "verdict"),
    [
        (GOOD, MediaUrl.ALLOWED),
        ("https://fal.media/files/a.safetensors", MediaUrl.ALLOWED),
        ("https://V3.FAL.MEDIA/files/a", MediaUrl.ALLOWED),
        ("https://storage.googleapis.com/falserverless/files/a.safetensors", MediaUrl.ALLOWED),
        ("https://storage.googleapis.com/someone-else/a.safetensors", MediaUrl.FOREIGN_HOST),
        ("https://evilfal.media/a", MediaUrl.FOREIGN_HOST),
        ("https://fal.media.evil.example/a", MediaUrl.FOREIGN_HOST),
        (FOREIGN, MediaUrl.FOREIGN_HOST),
        (JAVASCRIPT, MediaUrl.NOT_HTTPS),
        ("http://v3.fal.media/files/a", MediaUrl.NOT_HTTPS),
        ("data:text/html,<script>alert(1)</script>", MediaUrl.NOT_HTTPS),
        ("https://user:pw@v3.fal.media/a", MediaUrl.NOT_HTTPS),
        ("https://v3.fal.media/a b", MediaUrl.NOT_HTTPS),
        ("https://v3.fal.media:notaport/a", MediaUrl.NOT_HTTPS),
        ("", MediaUrl.NOT_HTTPS),
        ("https://v3.fal.media/" + "a" * 3000, MediaUrl.NOT_HTTPS),
    ],
)
def test_the_rule(url, verdict):
    assert check_media_url(url) == verdict


DOT_DOT = "https://storage.googleapis.com/falserverless/../evil-bucket/l.safetensors"


@pytest.mark.parametrize(
    "url",
    [
        DOT_DOT,
        "https://storage.googleapis.com/falserverless/./../evil-bucket/l.safetensors",
        "https://storage.googleapis.com/falserverless/files/../../evil-bucket/l",
        "https://storage.googleapis.com/falserverless/%2e%2e/evil-bucket/l.safetensors",
        "https://storage.googleapis.com/falserverless/%2E%2E/evil-bucket/l.safetensors",
        "https://storage.googleapis.com/falserverless/%252e%252e/evil-bucket/l",
        "https://storage.googleapis.com/falserverless%2F..%2Fevil-bucket/l.safetensors",
        "https://storage.googleapis.com/falserverless\\..\\evil-bucket/l.safetensors",
        "https://storage.googleapis.com/%66alserverless/../evil-bucket/l",
        "https://storage.googleapis.com/falserverless/%ff/../../evil/l",
    ],
)
def test_a_path_is_normalised_before_the_prefix_rule(url):
    assert check_media_url(url) == MediaUrl.FOREIGN_HOST


@pytest.mark.parametrize(
    "url",
    [
        "https://storage.googleapis.com/falserverless/files/./a.safetensors",
        "https://storage.googleapis.com/falserverless/files/x/../a.safetensors",
        "https://storage.googleapis.com/%66alserverless/files/a.safetensors",
        "https://v3.fal.media/files/../other/a.safetensors",  # a host rule: any path
    ],
)
def test_a_normalised_path_inside_the_prefix_is_still_allowed(url):
    assert check_media_url(url) == MediaUrl.ALLOWED


def test_a_dot_dot_url_by_webhook_never_completes_nor_reaches_the_bot(
    deliver, training_avatar, bot
):
    avatar, training = training_avatar("req-dotdot")
    give(avatar, bot)

    response = deliver(delivery_body("req-dotdot", payload=_payload(DOT_DOT)))

    assert response.status_code == 200
    _assert_flagged_for_staff(training, DOT_DOT)
    answer = bot.get(f"/api/v1/avatars/{avatar.pk}").json()
    assert answer["status"] == "training" and answer["lora_url"] == ""


def test_the_allowed_hosts_come_from_the_setting(settings):
    settings.FAL_MEDIA_ALLOWED_HOSTS = ["cdn.example.com"]

    assert check_media_url("https://cdn.example.com/a") == MediaUrl.ALLOWED
    assert check_media_url(GOOD) == MediaUrl.FOREIGN_HOST


def _payload(lora: str, config: str = "https://v3.fal.media/files/demo/x/config.json") -> dict:
    return {"diffusers_lora_file": {"url": lora}, "config_file": {"url": config}}


def _owner_told_ready(training: Training) -> bool:
    return Notification.objects.filter(training=training, kind=NotificationKind.READY).exists()


def _assert_failed_with_staff_alert(training: Training, url: str) -> None:
    training.refresh_from_db()
    assert training.avatar.status == AvatarStatus.ERROR
    assert training.error_type == "unsafe_result_url"
    assert "not https" in training.error_message and url[:40] in training.error_message
    assert training.lora_url == ""
    assert not _owner_told_ready(training)
    alert = Notification.objects.get(kind=NotificationKind.UNSAFE_RESULT)
    assert alert.audience == Audience.STAFF and alert.training_id == training.pk
    assert "javascript:alert" in alert.text or url[:20] in alert.text


def _assert_flagged_for_staff(training: Training, url: str) -> None:
    training.refresh_from_db()
    assert training.avatar.status == AvatarStatus.TRAINING
    assert training.stuck_since is not None and url in training.stuck_reason
    assert training.lora_url == ""
    assert not Notification.objects.filter(audience=Audience.OWNER).exists()
    assert Notification.objects.filter(kind=NotificationKind.STUCK).count() == 1


# --- the webhook -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["lora", "config"])
def test_a_javascript_url_by_webhook_fails_the_training_and_alerts_staff(
    which, deliver, training_avatar
):
    _avatar, training = training_avatar("req-js")
    payload = _payload(JAVASCRIPT) if which == "lora" else _payload(GOOD, JAVASCRIPT)

    response = deliver(delivery_body("req-js", payload=payload))

    assert response.status_code == 200
    _assert_failed_with_staff_alert(training, JAVASCRIPT)


def test_a_foreign_https_host_by_webhook_flags_the_training_for_staff(deliver, training_avatar):
    _avatar, training = training_avatar("req-foreign")

    response = deliver(delivery_body("req-foreign", payload=_payload(FOREIGN)))

    assert response.status_code == 200
    _assert_flagged_for_staff(training, FOREIGN)


# --- the periodic check ----------------------------------------------------------------------


@pytest.fixture
def polled(fal, make_avatar, settings):
    """Start on the emulator with the webhook dropped, finish with ``payload``, run a check."""
    settings.FAL_CALL_TIMEOUT_SECONDS = 2.0

    def run(payload: dict) -> Training:
        fal.drop_webhooks()
        fal.script(result=payload)
        outcome = start_training(make_avatar(), source=EventSource.COMMAND)
        training = outcome.training
        Training.objects.filter(pk=training.pk).update(
            next_check_at=timezone.now() - timedelta(seconds=1)
        )
        tasks.run_check()
        return training

    return run


def test_a_javascript_url_by_the_periodic_check_fails_the_training_and_alerts_staff(polled):
    training = polled(_payload(JAVASCRIPT))

    _assert_failed_with_staff_alert(training, JAVASCRIPT)


def test_a_foreign_https_host_by_the_periodic_check_flags_the_training_for_staff(polled):
    training = polled(_payload(FOREIGN))

    _assert_flagged_for_staff(training, FOREIGN)


def test_fals_own_storage_by_the_periodic_check_completes_as_before(polled):
    training = polled(_payload(GOOD))

    training.refresh_from_db()
    assert training.avatar.status == AvatarStatus.COMPLETED
    assert training.lora_url == GOOD
    assert _owner_told_ready(training)
