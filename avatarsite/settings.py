"""Settings for the avatar training monitor.

Everything that differs between a laptop and production comes from the environment
(see the configuration table in README.md). Bad values stop start-up with a message
naming the variable; missing-but-needed values are reported by system checks
(``python manage.py check``), ids ``avatarsite.E00x`` / ``avatarsite.W00x``.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from avatarsite.env import (
    env_bool,
    env_database,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_proxy_ssl_header,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# python-telegram-bot: retry_after as a timedelta, and no deprecation warning that
# would surface instead of RetryAfter under warnings-as-errors.
os.environ.setdefault("PTB_TIMEDELTA", "true")

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off (set SECRET_KEY, or DEBUG=1 for a local run)"
        )
    SECRET_KEY = "insecure-local-development-key-not-for-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
# Proxies whose X-Forwarded-For we believe (the same variable gunicorn reads). Every
# per-address decision (login lockouts, refused-webhook records, /metrics allow-list)
# goes through avatarsite.client_address.
FORWARDED_ALLOW_IPS = env_networks("FORWARDED_ALLOW_IPS", ["127.0.0.1", "::1"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    # Listed before django_q so that its `qcluster` command (startup restore, then
    # django-q2's own) wins.
    "monitoring.apps.MonitoringConfig",
    "notifications.apps.NotificationsConfig",
    "django_q",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "avatarsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "avatarsite.wsgi.application"
ASGI_APPLICATION = "avatarsite.asgi.application"

DATABASES = {"default": env_database("DATABASE_URL", BASE_DIR / "db.sqlite3")}
# Two test runs on one machine must never share a database (CI and a developer,
# or two CI runs): the test command picks a unique name.
_test_db_name = env_str("TEST_DATABASE_NAME")
if _test_db_name:
    DATABASES["default"]["TEST"] = {"NAME": _test_db_name}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# The admin follows the browser's language (LocaleMiddleware); the operator log
# lines stay in Russian whatever the language.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("ru", _("Russian"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- HTTPS -----------------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header("SECURE_PROXY_SSL_HEADER")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# fal treats a redirect as a permanent delivery failure, and load balancers probe
# over plain http: these two paths are never redirected.
SECURE_REDIRECT_EXEMPT = [r"^webhooks/fal/$", r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- fal ---------------------------------------------------------------------------
# fal-client itself reads only FAL_KEY; the old system's FAL_API_KEY is accepted too
# and the key is handed to the client explicitly.
FAL_KEY = env_str("FAL_KEY") or env_str("FAL_API_KEY")
if not FAL_KEY and env_str("FAL_KEY_ID") and env_str("FAL_KEY_SECRET"):
    FAL_KEY = f"{env_str('FAL_KEY_ID')}:{env_str('FAL_KEY_SECRET')}"
# Where fal's queue is comes from FAL_QUEUE_RUN_HOST, which fal-client reads when it
# is first imported; monitoring.fal.client reads the same value from fal-client so that our
# own submit POST and fal-client always talk to the same queue (fal's, or the
# emulator's in tests and the demo).
FAL_WEBHOOK_JWKS_URL = env_url(
    "FAL_WEBHOOK_JWKS_URL", "https://rest.fal.ai/.well-known/jwks.json", schemes=("https", "http")
)
PUBLIC_BASE_URL = env_url("PUBLIC_BASE_URL", None, schemes=("https", "http"))
FAL_SUBMIT_TIMEOUT_SECONDS = env_float("FAL_SUBMIT_TIMEOUT_SECONDS", 30.0, minimum=1.0)
FAL_CALL_TIMEOUT_SECONDS = env_float("FAL_CALL_TIMEOUT_SECONDS", 20.0, minimum=0.1)
WEBHOOK_MAX_BODY_BYTES = env_int("WEBHOOK_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS = env_int("WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS", 300, minimum=1)
FAL_JWKS_CACHE_SECONDS = env_int("FAL_JWKS_CACHE_SECONDS", 24 * 3600, minimum=1, maximum=24 * 3600)
FAL_JWKS_REFRESH_MIN_INTERVAL_SECONDS = env_int(
    "FAL_JWKS_REFRESH_MIN_INTERVAL_SECONDS", 60, minimum=0
)

# --- Monitoring ----------------------------------------------------------------------
CHECK_INTERVAL_SECONDS = env_int("CHECK_INTERVAL_SECONDS", 60, minimum=1)
# Calls in flight per check batch, spread over fal-clients of at most 20 each (fal-client
# keeps 20 connections alive; beyond that every call pays a TLS handshake). See
# bench/check_run.py for the figures; more workers add throughput too.
CHECK_CONCURRENCY = env_int("CHECK_CONCURRENCY", 40, minimum=1, maximum=1000)
CHECK_BATCH_SIZE = env_int("CHECK_BATCH_SIZE", 500, minimum=1)
# A submit whose answer never came back: after this long staff decide, nothing resubmits.
STUCK_SUBMITTING_MINUTES = env_int("STUCK_SUBMITTING_MINUTES", 5, minimum=1)
STUCK_IN_QUEUE_MINUTES = env_int("STUCK_IN_QUEUE_MINUTES", 60, minimum=1)
STUCK_IN_PROGRESS_MINUTES_PORTRAIT = env_int("STUCK_IN_PROGRESS_MINUTES_PORTRAIT", 90, minimum=1)
STUCK_IN_PROGRESS_MINUTES_STYLE = env_int("STUCK_IN_PROGRESS_MINUTES_STYLE", 45, minimum=1)
STUCK_TOTAL_HOURS = env_int("STUCK_TOTAL_HOURS", 6, minimum=1)
STUCK_FAL_UNREACHABLE_MINUTES = env_int("STUCK_FAL_UNREACHABLE_MINUTES", 15, minimum=1)
# fal's 404 for a request we submitted is only believed after it repeats.
# fal failing for everyone: at least this share of one run's calls, out of at least
# this many, failed. The run records it, staff get one alert per episode, and runs
# check a sample (FAL_OUTAGE_MIN_CALLS trainings) until one succeeds.
FAL_OUTAGE_ERROR_SHARE = env_float("FAL_OUTAGE_ERROR_SHARE", 0.5, minimum=0.01)
FAL_OUTAGE_MIN_CALLS = env_int("FAL_OUTAGE_MIN_CALLS", 20, minimum=1)
FAL_NOT_FOUND_CONFIRM_COUNT = env_int("FAL_NOT_FOUND_CONFIRM_COUNT", 3, minimum=1)
FAL_NOT_FOUND_CONFIRM_MINUTES = env_int("FAL_NOT_FOUND_CONFIRM_MINUTES", 5, minimum=0)

# --- Telegram ------------------------------------------------------------------------
TELEGRAM_BOT_TOKEN = env_str("TELEGRAM_BOT_TOKEN")
TELEGRAM_API_BASE_URL = env_url(
    "TELEGRAM_API_BASE_URL", "https://api.telegram.org/bot", schemes=("https", "http")
)
_staff_chat = env_str("TELEGRAM_STAFF_CHAT_ID")
try:
    TELEGRAM_STAFF_CHAT_ID = int(_staff_chat) if _staff_chat else None
except ValueError:
    raise ImproperlyConfigured(
        f"TELEGRAM_STAFF_CHAT_ID must be a numeric chat id, got {_staff_chat!r}"
    ) from None
_backends = {
    "telegram": "notifications.backends.telegram.TelegramBackend",
    "console": "notifications.backends.console.ConsoleBackend",
    "locmem": "notifications.backends.locmem.LocmemBackend",
}
_backend_name = env_str("NOTIFICATION_BACKEND", "telegram" if TELEGRAM_BOT_TOKEN else "console")
if _backend_name not in _backends:
    raise ImproperlyConfigured(
        f"NOTIFICATION_BACKEND must be one of {', '.join(_backends)}, got {_backend_name!r}"
    )
NOTIFICATION_BACKEND = _backends[_backend_name]

# Delivery of the notification outbox (notifications.delivery).
NOTIFICATION_MAX_ATTEMPTS = env_int("NOTIFICATION_MAX_ATTEMPTS", 6, minimum=1)
NOTIFICATION_RETRY_BASE_SECONDS = env_float("NOTIFICATION_RETRY_BASE_SECONDS", 5.0, minimum=0.0)
NOTIFICATION_RETRY_MAX_SECONDS = env_float("NOTIFICATION_RETRY_MAX_SECONDS", 600.0, minimum=0.0)
# The longest rate-limit wait a sender sleeps through right before its request (the
# spacing between two sends is 1/25 s). Every longer wait (a chat's 1 s, flood control,
# backoff) puts the message back with its due time and frees the worker.
NOTIFICATION_INLINE_WAIT_SECONDS = env_float("NOTIFICATION_INLINE_WAIT_SECONDS", 0.2, minimum=0.0)
# The relay (notifications.relay) hands due messages to a sender this often.
NOTIFICATION_RELAY_POLL_SECONDS = env_float("NOTIFICATION_RELAY_POLL_SECONDS", 0.5, minimum=0.05)
# This many transient failures in a row, across every send, mean the Bot API is down
# for everyone: sending pauses and probes every NOTIFICATION_OUTAGE_PROBE_SECONDS.
NOTIFICATION_OUTAGE_FAILURES = env_int("NOTIFICATION_OUTAGE_FAILURES", 5, minimum=2)
NOTIFICATION_OUTAGE_PROBE_SECONDS = env_float("NOTIFICATION_OUTAGE_PROBE_SECONDS", 3.0, minimum=0.0)
# A claimed row belongs to its worker this long; a worker that died mid-send frees it.
NOTIFICATION_LEASE_SECONDS = env_float("NOTIFICATION_LEASE_SECONDS", 90.0, minimum=0.1)
NOTIFICATION_SEND_TIMEOUT_SECONDS = env_float(
    "NOTIFICATION_SEND_TIMEOUT_SECONDS", 15.0, minimum=0.1
)
# While the token is rejected, a probe (getMe) is tried at most this often.
NOTIFICATION_PROBE_INTERVAL_SECONDS = env_float(
    "NOTIFICATION_PROBE_INTERVAL_SECONDS", 60.0, minimum=0.0
)
# Stuck alerts wait this long for company; this many pending at once become one digest.
NOTIFICATION_STUCK_HOLD_SECONDS = env_float("NOTIFICATION_STUCK_HOLD_SECONDS", 20.0, minimum=0.0)
NOTIFICATION_STUCK_DIGEST_MIN = env_int("NOTIFICATION_STUCK_DIGEST_MIN", 3, minimum=2)
# Telegram's limits, shared by every worker process (database, or Redis when set).
NOTIFICATION_RATE_PER_CHAT_SECONDS = env_float(
    "NOTIFICATION_RATE_PER_CHAT_SECONDS", 1.0, minimum=0.0
)
NOTIFICATION_RATE_GROUP_PER_MINUTE = env_int("NOTIFICATION_RATE_GROUP_PER_MINUTE", 20, minimum=1)
NOTIFICATION_RATE_GLOBAL_PER_SECOND = env_int("NOTIFICATION_RATE_GLOBAL_PER_SECOND", 25, minimum=1)

# --- Retention -------------------------------------------------------------------------
RETENTION_WEBHOOK_DELIVERY_DAYS = env_int("RETENTION_WEBHOOK_DELIVERY_DAYS", 30, minimum=1)
RETENTION_FINISHED_EVENTS_DAYS = env_int("RETENTION_FINISHED_EVENTS_DAYS", 180, minimum=1)
RETENTION_CHECK_RUN_DAYS = env_int("RETENTION_CHECK_RUN_DAYS", 7, minimum=1)
RETENTION_TASK_RESULT_DAYS = env_int("RETENTION_TASK_RESULT_DAYS", 7, minimum=1)

# --- django-q2 -------------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", None, schemes=("redis", "rediss", "unix"))
Q_WORKERS = env_int("Q_WORKERS", 2, minimum=1, maximum=64)
# A task may run at most `timeout` seconds; `retry` is larger so a live task is never
# handed to a second worker while the first still runs it.
Q_CLUSTER = {
    "name": "avatars",
    "workers": Q_WORKERS,
    "timeout": env_int("Q_TIMEOUT_SECONDS", 55, minimum=5),
    "retry": env_int("Q_RETRY_SECONDS", 120, minimum=10),
    "max_attempts": 3,
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "poll": 0.2,
    "label": "Django Q2",
}
# Notifications have their own queue and workers (a second `qcluster` started with
# Q_CLUSTER_NAME=notifications), so a message never waits behind a long check run.
NOTIFICATION_CLUSTER = "notifications"
# Four: a send spends most of its time waiting (the database, the Bot API), and two
# workers could not reach the 25/s limit after an outage (bench/notifications.py).
NOTIFICATION_WORKERS = env_int("NOTIFICATION_WORKERS", 4, minimum=1, maximum=16)
Q_CLUSTER["ALT_CLUSTERS"] = {
    NOTIFICATION_CLUSTER: {
        "workers": NOTIFICATION_WORKERS,
        "timeout": 55,
        "retry": 120,
        "poll": 0.1,
    },
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
if Q_CLUSTER["retry"] <= Q_CLUSTER["timeout"]:
    raise ImproperlyConfigured("Q_RETRY_SECONDS must be larger than Q_TIMEOUT_SECONDS")

# --- Logging ---------------------------------------------------------------------------
LOG_LEVEL = (env_str("LOG_LEVEL", "INFO") or "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "avatarsite.log_redaction.RedactSecrets"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        },
    },
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        # httpx logs every request URL at INFO, and Telegram URLs contain the token.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "telegram": {"level": "WARNING"},
        # django-q2 logs as "django-q"; at INFO it writes a line for every task enqueued
        # (one per webhook), so only its warnings and errors by default.
        "django-q": {"level": env_str("DJANGO_Q_LOG_LEVEL", "WARNING")},
    },
}
