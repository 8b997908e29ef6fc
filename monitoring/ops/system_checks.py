"""Django system checks: what configuration is missing, and how bad that is.

Run with ``python manage.py check`` (``--deploy`` adds Django's own security checks).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register


@register(Tags.compatibility)
def check_configuration(app_configs=None, **kwargs):
    problems = []
    if not settings.FAL_KEY:
        level = Warning if settings.DEBUG else Error
        problems.append(
            level(
                "No fal key: trainings can neither be started nor checked.",
                hint="Set FAL_KEY (or FAL_API_KEY) to the key_id:key_secret from fal's dashboard.",
                id="avatarsite.E001" if level is Error else "avatarsite.W001",
            )
        )
    base = settings.PUBLIC_BASE_URL
    if not base:
        problems.append(
            Warning(
                "PUBLIC_BASE_URL is not set: trainings are submitted without a webhook "
                "and finish only through the periodic check (up to one interval later).",
                hint="Set PUBLIC_BASE_URL to the https origin fal can reach, e.g. https://monitor.example.com.",
                id="avatarsite.W002",
            )
        )
    elif urlsplit(base).scheme != "https":
        problems.append(
            Warning(
                "PUBLIC_BASE_URL uses plain http: fal's webhooks would travel unencrypted.",
                hint="Use an https origin in production; http is fine for local runs and tests.",
                id="avatarsite.W003",
            )
        )
    if (
        settings.NOTIFICATION_BACKEND.endswith("TelegramBackend")
        and not settings.TELEGRAM_BOT_TOKEN
    ):
        problems.append(
            Error(
                "NOTIFICATION_BACKEND is telegram but TELEGRAM_BOT_TOKEN is not set.",
                hint="Set TELEGRAM_BOT_TOKEN, or NOTIFICATION_BACKEND=console.",
                id="avatarsite.E002",
            )
        )
    if not settings.TELEGRAM_BOT_TOKEN:
        problems.append(
            Warning(
                "TELEGRAM_BOT_TOKEN is not set: owners are not told on Telegram "
                "(messages are printed by the console backend instead).",
                hint="Set TELEGRAM_BOT_TOKEN to the bot's token from @BotFather.",
                id="avatarsite.W004",
            )
        )
    if not settings.TELEGRAM_STAFF_CHAT_ID:
        problems.append(
            Warning(
                "TELEGRAM_STAFF_CHAT_ID is not set: staff alerts (stuck trainings, fal "
                "account trouble) are recorded but not sent.",
                hint="Set TELEGRAM_STAFF_CHAT_ID to the staff group's chat id.",
                id="avatarsite.W005",
            )
        )
    if not settings.DEBUG and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        problems.append(
            Warning(
                "SQLite is in use with DEBUG off: one machine only, no concurrent workers on other hosts.",
                hint="Set DATABASE_URL=postgres://... for production.",
                id="avatarsite.W006",
            )
        )
    return problems


@register(Tags.security)
def check_webhook_intake(app_configs=None, **kwargs):
    """fal's webhook intake: where the signing keys come from, and whose deliveries count."""
    problems: list[CheckMessage] = []
    if urlsplit(settings.FAL_WEBHOOK_JWKS_URL).scheme != "https" and not settings.DEBUG:
        problems.append(
            Error(
                "FAL_WEBHOOK_JWKS_URL is not https: anyone on the path could hand us "
                "signing keys and forge every webhook.",
                hint="Use fal's https://rest.fal.ai/.well-known/jwks.json (http only with DEBUG=1).",
                id="avatarsite.E010",
            )
        )
    if not settings.FAL_WEBHOOK_USER_ID and not settings.DEBUG:
        problems.append(
            Warning(
                "FAL_WEBHOOK_USER_ID is not set: a delivery fal signed for another "
                "account's job would be accepted.",
                hint="Set FAL_WEBHOOK_USER_ID to our fal account's user id "
                "(the X-Fal-Webhook-User-Id of our deliveries).",
                id="avatarsite.W010",
            )
        )
    return problems


@register(Tags.files, deploy=True)
def check_avatar_files(app_configs=None, **kwargs):
    """Kept avatar files on the filesystem in production (``check --deploy``): docs/files.md."""
    problems: list[CheckMessage] = []
    if not settings.AVATAR_FILES_S3_BUCKET and not settings.AVATAR_FILES_X_ACCEL_REDIRECT:
        problems.append(
            Warning(
                "Kept avatar files are on this host's filesystem and streamed by gunicorn "
                "threads (90 MB each).",
                hint="Behind nginx set AVATAR_FILES_X_ACCEL_REDIRECT=/_avatar-files/ "
                "(deploy/nginx.conf); with several hosts set AVATAR_FILES_S3_BUCKET.",
                id="avatarsite.W020",
            )
        )
    return problems
