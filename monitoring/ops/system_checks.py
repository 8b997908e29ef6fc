"""Django system checks: what configuration is missing, and how bad that is.

Run with ``python manage.py check`` (``--deploy`` adds Django's own security checks).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register


def _found(*checks: tuple[bool, Callable[..., CheckMessage], str, str, str]) -> list[CheckMessage]:
    """(failing, level, message, hint, id) → the messages of the failing ones."""
    return [level(msg, hint=hint, id=id) for failing, level, msg, hint, id in checks if failing]


@register(Tags.compatibility)
def check_configuration(app_configs=None, **kwargs):
    base = settings.PUBLIC_BASE_URL
    telegram = settings.NOTIFICATION_BACKEND.endswith("TelegramBackend")
    return _found(
        (
            not settings.FAL_KEY,
            Warning if settings.DEBUG else Error,
            "No fal key: trainings can neither be started nor checked.",
            "Set FAL_KEY (or FAL_API_KEY) to the key_id:key_secret from fal's dashboard.",
            "avatarsite.W001" if settings.DEBUG else "avatarsite.E001",
        ),
        (
            not base,
            Warning,
            "PUBLIC_BASE_URL is not set: trainings are submitted without a webhook "
            "and finish only through the periodic check (up to one interval later).",
            "Set PUBLIC_BASE_URL to the https origin fal can reach, e.g. https://monitor.example.com.",
            "avatarsite.W002",
        ),
        (
            bool(base) and urlsplit(base).scheme != "https",
            Warning,
            "PUBLIC_BASE_URL uses plain http: fal's webhooks would travel unencrypted.",
            "Use an https origin in production; http is fine for local runs and tests.",
            "avatarsite.W003",
        ),
        (
            telegram and not settings.TELEGRAM_BOT_TOKEN,
            Error,
            "NOTIFICATION_BACKEND is telegram but TELEGRAM_BOT_TOKEN is not set.",
            "Set TELEGRAM_BOT_TOKEN, or NOTIFICATION_BACKEND=console.",
            "avatarsite.E002",
        ),
        (
            not settings.TELEGRAM_BOT_TOKEN,
            Warning,
            "TELEGRAM_BOT_TOKEN is not set: owners are not told on Telegram "
            "(messages are printed by the console backend instead).",
            "Set TELEGRAM_BOT_TOKEN to the bot's token from @BotFather.",
            "avatarsite.W004",
        ),
        (
            not settings.TELEGRAM_STAFF_CHAT_ID,
            Warning,
            "TELEGRAM_STAFF_CHAT_ID is not set: staff alerts (stuck trainings, fal "
            "account trouble) are recorded but not sent.",
            "Set TELEGRAM_STAFF_CHAT_ID to the staff group's chat id.",
            "avatarsite.W005",
        ),
        (
            not settings.DEBUG and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
            Warning,
            "SQLite is in use with DEBUG off: one machine only, no concurrent workers on other hosts.",
            "Set DATABASE_URL=postgres://... for production.",
            "avatarsite.W006",
        ),
    )


@register(Tags.security)
def check_webhook_intake(app_configs=None, **kwargs):
    """fal's webhook intake: where the signing keys come from, and whose deliveries count."""
    return _found(
        (
            urlsplit(settings.FAL_WEBHOOK_JWKS_URL).scheme != "https" and not settings.DEBUG,
            Error,
            "FAL_WEBHOOK_JWKS_URL is not https: anyone on the path could hand us "
            "signing keys and forge every webhook.",
            "Use fal's https://rest.fal.ai/.well-known/jwks.json (http only with DEBUG=1).",
            "avatarsite.E010",
        ),
        (
            not settings.FAL_WEBHOOK_USER_ID and not settings.DEBUG,
            Warning,
            "FAL_WEBHOOK_USER_ID is not set: a delivery fal signed for another "
            "account's job would be accepted.",
            "Set FAL_WEBHOOK_USER_ID to our fal account's user id "
            "(the X-Fal-Webhook-User-Id of our deliveries).",
            "avatarsite.W010",
        ),
    )


@register(Tags.files, deploy=True)
def check_avatar_files(app_configs=None, **kwargs):
    """Kept avatar files on the filesystem in production (``check --deploy``): docs/files.md."""
    return _found(
        (
            not settings.AVATAR_FILES_S3_BUCKET and not settings.AVATAR_FILES_X_ACCEL_REDIRECT,
            Warning,
            "Kept avatar files are on this host's filesystem and streamed by gunicorn "
            "threads (90 MB each).",
            "Behind nginx set AVATAR_FILES_X_ACCEL_REDIRECT=/_avatar-files/ "
            "(deploy/nginx.conf); with several hosts set AVATAR_FILES_S3_BUCKET.",
            "avatarsite.W020",
        ),
    )
