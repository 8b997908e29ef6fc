"""Settings, all from the environment: every variable is in docs/configuration.md."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from avatarsite.env import (
    env_bool,
    env_database,
    env_float,
    env_int,
    env_int_or_off,
    env_list,
    env_networks,
    env_proxy_ssl_header,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# Lets classes be written as ModelAdmin[Avatar] (the generic the type checker reads):
# Django itself has no __class_getitem__ on them. Must run before any admin is imported.
django_stubs_ext.monkeypatch()

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

SILENCED_SYSTEM_CHECKS = env_list("SILENCED_SYSTEM_CHECKS", [])
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
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
    # Before django_q, so that our `qcluster` command wins.
    "monitoring.apps.MonitoringConfig",
    "notifications.apps.NotificationsConfig",
    "monitoring.api.apps.ApiConfig",
    # The API docs' own static files, served by us (no CDN, so the CSP can stay strict).
    "ninja",
    "django_q",
    "axes",
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
    "avatarsite.csp.AdminCSPMiddleware",
    # An admin object id the model cannot hold: 404 (400 in an action POST), never 500.
    "avatarsite.admin_ids.AdminObjectIdMiddleware",
    "monitoring.api.middleware.ApiCallMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
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
                "monitoring.ops.attention.context",
            ]
        },
    }
]

WSGI_APPLICATION = "avatarsite.wsgi.application"
ASGI_APPLICATION = "avatarsite.asgi.application"

DATABASES = {"default": env_database("DATABASE_URL", BASE_DIR / "db.sqlite3")}
if env_str("TEST_DATABASE_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": env_str("TEST_DATABASE_NAME")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes first: a locked-out login is refused before any password is hashed.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("ru", _("Russian"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
FORMAT_MODULE_PATH = ["avatarsite.formats"]
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

SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header("SECURE_PROXY_SSL_HEADER")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# fal treats a redirect as a permanent delivery failure, and load balancers and
# Prometheus probe over plain http: these paths are never redirected.
SECURE_REDIRECT_EXEMPT = [r"^webhooks/fal/$", r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Admin pages only (avatarsite/csp.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

ADMIN_BULK_START_MAX = env_int("ADMIN_BULK_START_MAX", 20, minimum=1)
ADMIN_LOGIN_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5, minimum=1)
ADMIN_LOGIN_ADDRESS_FAILURE_LIMIT = env_int("ADMIN_LOGIN_ADDRESS_FAILURE_LIMIT", 30, minimum=1)
ADMIN_LOGIN_COOLOFF_MINUTES = env_int("ADMIN_LOGIN_COOLOFF_MINUTES", 15, minimum=1)
AXES_FAILURE_LIMIT = ADMIN_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=ADMIN_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"]]
AXES_HANDLER = "avatarsite.login_lockout.PairAndAddressHandler"
AXES_CLIENT_IP_CALLABLE = "avatarsite.client_address.client_address"
AXES_LOCKOUT_CALLABLE = "avatarsite.login_lockout.lockout_response"
# Its start-up banner would be one more INFO line before every command's output.
AXES_VERBOSE = False

FAL_KEY = env_str("FAL_KEY") or env_str("FAL_API_KEY")
if not FAL_KEY and env_str("FAL_KEY_ID") and env_str("FAL_KEY_SECRET"):
    FAL_KEY = f"{env_str('FAL_KEY_ID')}:{env_str('FAL_KEY_SECRET')}"
FAL_WEBHOOK_JWKS_URL = env_url("FAL_WEBHOOK_JWKS_URL", "https://rest.fal.ai/.well-known/jwks.json")
PUBLIC_BASE_URL = env_url("PUBLIC_BASE_URL", None)
FAL_SUBMIT_TIMEOUT_SECONDS = env_float("FAL_SUBMIT_TIMEOUT_SECONDS", 30.0, minimum=1.0)
FAL_CALL_TIMEOUT_SECONDS = env_float("FAL_CALL_TIMEOUT_SECONDS", 20.0, minimum=0.1)
FAL_PLATFORM_API_URL = env_url("FAL_PLATFORM_API_URL", "https://api.fal.ai/v1")
FAL_PLATFORM_TIMEOUT_SECONDS = env_float("FAL_PLATFORM_TIMEOUT_SECONDS", 10.0, minimum=0.1)
FAL_PLATFORM_MAX_PAGES = env_int("FAL_PLATFORM_MAX_PAGES", 200, minimum=1)
FAL_ADMIN_KEY = env_str("FAL_ADMIN_KEY")
FAL_BILLING_WAIT_HOURS = env_float("FAL_BILLING_WAIT_HOURS", 24.0)
FAL_BALANCE_CHECK_SECONDS = env_int("FAL_BALANCE_CHECK_SECONDS", 600, minimum=15)
FAL_BALANCE_ALERT_USD = env_float("FAL_BALANCE_ALERT_USD", 50.0)
FAL_BALANCE_ALERT_HOURS = env_float("FAL_BALANCE_ALERT_HOURS", 24.0)
FAL_BALANCE_HOLD_USD = env_float("FAL_BALANCE_HOLD_USD", 10.0)
FAL_LOST_SUBMIT_GIVE_UP_HOURS = env_float("FAL_LOST_SUBMIT_GIVE_UP_HOURS", 24.0)
FAL_RECONCILE_HOURS = env_int("FAL_RECONCILE_HOURS", 24, minimum=1, maximum=90 * 24)
WEBHOOK_MAX_BODY_BYTES = env_int("WEBHOOK_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS = env_int("WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS", 300, minimum=1)
FAL_JWKS_CACHE_SECONDS = env_int("FAL_JWKS_CACHE_SECONDS", 24 * 3600, minimum=1, maximum=24 * 3600)
FAL_JWKS_REFRESH_MIN_INTERVAL_SECONDS = env_int(
    "FAL_JWKS_REFRESH_MIN_INTERVAL_SECONDS", 60, minimum=0
)
FAL_WEBHOOK_USER_ID = env_str("FAL_WEBHOOK_USER_ID")
WEBHOOK_REFUSED_ROWS_PER_MINUTE = env_int("WEBHOOK_REFUSED_ROWS_PER_MINUTE", 60, minimum=0)
WEBHOOK_REFUSED_MAX_MB_PER_DAY = env_int("WEBHOOK_REFUSED_MAX_MB_PER_DAY", 50, minimum=1)
WEBHOOK_REFUSED_BYTES_PER_MINUTE = env_int(
    "WEBHOOK_REFUSED_BYTES_PER_MINUTE",
    WEBHOOK_REFUSED_MAX_MB_PER_DAY * 1_000_000 // (24 * 60),
    minimum=0,
)
FAL_MEDIA_ALLOWED_HOSTS = env_list(
    "FAL_MEDIA_ALLOWED_HOSTS", ["fal.media", "*.fal.media", "storage.googleapis.com/falserverless/"]
)
FAL_MEDIA_EXPIRATION_SECONDS = env_int_or_off(
    "FAL_MEDIA_EXPIRATION_SECONDS", 30 * 86400, minimum=3600
)
HEALTHZ_TOKEN = env_str("HEALTHZ_TOKEN")

CHECK_INTERVAL_SECONDS = env_int("CHECK_INTERVAL_SECONDS", 60, minimum=1)
# See bench/check_run.py for the figures.
CHECK_CONCURRENCY = env_int("CHECK_CONCURRENCY", 40, minimum=1, maximum=1000)
CHECK_BATCH_SIZE = env_int("CHECK_BATCH_SIZE", 500, minimum=1)
CHECK_LEASE_SECONDS = env_float(
    "CHECK_LEASE_SECONDS", min(30.0, CHECK_INTERVAL_SECONDS / 2), minimum=0.5
)
if CHECK_LEASE_SECONDS >= CHECK_INTERVAL_SECONDS:
    raise ImproperlyConfigured("CHECK_LEASE_SECONDS must be shorter than CHECK_INTERVAL_SECONDS")
STUCK_SUBMITTING_MINUTES = env_int("STUCK_SUBMITTING_MINUTES", 5, minimum=1)
STUCK_IN_QUEUE_MINUTES = env_int("STUCK_IN_QUEUE_MINUTES", 60, minimum=1)
STUCK_IN_PROGRESS_MINUTES_PORTRAIT = env_int("STUCK_IN_PROGRESS_MINUTES_PORTRAIT", 90, minimum=1)
STUCK_IN_PROGRESS_MINUTES_STYLE = env_int("STUCK_IN_PROGRESS_MINUTES_STYLE", 45, minimum=1)
STUCK_TOTAL_HOURS = env_int("STUCK_TOTAL_HOURS", 6, minimum=1)
STUCK_FAL_UNREACHABLE_MINUTES = env_int("STUCK_FAL_UNREACHABLE_MINUTES", 15, minimum=1)
FAL_OUTAGE_ERROR_SHARE = env_float("FAL_OUTAGE_ERROR_SHARE", 0.5, minimum=0.01)
FAL_OUTAGE_MIN_CALLS = env_int("FAL_OUTAGE_MIN_CALLS", 20, minimum=1)
FAL_NOT_FOUND_CONFIRM_COUNT = env_int("FAL_NOT_FOUND_CONFIRM_COUNT", 3, minimum=1)
FAL_NOT_FOUND_CONFIRM_MINUTES = env_int("FAL_NOT_FOUND_CONFIRM_MINUTES", 5, minimum=0)
TRAINING_AUTO_RETRY_MAX = env_int("TRAINING_AUTO_RETRY_MAX", 2, minimum=0, maximum=10)
AUTO_RETRY_ALERT_RATIO = env_float("AUTO_RETRY_ALERT_RATIO", 0.2, minimum=0.01)
# Off by default: on an account that runs 2 trainings at once a long queue is normal.
TRAINING_START_TIMEOUT_SECONDS = env_int("TRAINING_START_TIMEOUT_SECONDS", 0, minimum=0)
if 0 < TRAINING_START_TIMEOUT_SECONDS < 10:
    raise ImproperlyConfigured("TRAINING_START_TIMEOUT_SECONDS must be 0 (off) or at least 10")
TRAINING_MAX_RUN_MINUTES_PORTRAIT = env_int("TRAINING_MAX_RUN_MINUTES_PORTRAIT", 180, minimum=1)
TRAINING_MAX_RUN_MINUTES_STYLE = env_int("TRAINING_MAX_RUN_MINUTES_STYLE", 90, minimum=1)
ADMIN_REFRESH_SECONDS = env_int("ADMIN_REFRESH_SECONDS", 60, minimum=0, maximum=3600)

AVATAR_FILES_COPY = env_bool("AVATAR_FILES_COPY", True)
AVATAR_FILES_ROOT = Path(env_str("AVATAR_FILES_ROOT", str(BASE_DIR / "var" / "avatar-files")))
AVATAR_FILES_S3_BUCKET = env_str("AVATAR_FILES_S3_BUCKET")
AVATAR_FILES_S3_ENDPOINT_URL = env_url("AVATAR_FILES_S3_ENDPOINT_URL", None)
# S3 presigns at most 7 days.
AVATAR_FILE_URL_MAX_AGE_SECONDS = env_int(
    "AVATAR_FILE_URL_MAX_AGE_SECONDS", 7 * 86400, minimum=60, maximum=7 * 86400
)
AVATAR_FILE_MAX_BYTES = env_int("AVATAR_FILE_MAX_BYTES", 2 * 1024**3, minimum=1024**2)
AVATAR_FILES_RETRY_HOURS = env_float("AVATAR_FILES_RETRY_HOURS", 24.0)
AVATAR_FILE_TIMEOUT_SECONDS = env_float("AVATAR_FILE_TIMEOUT_SECONDS", 20.0, minimum=0.1)
AVATAR_FILE_DOWNLOAD_SECONDS = env_float(
    "AVATAR_FILE_DOWNLOAD_SECONDS", max(5.0, env_int("Q_TIMEOUT_SECONDS", 55) - 10.0), minimum=1.0
)
AVATAR_FILES_SUPERSEDED_DAYS = env_int("AVATAR_FILES_SUPERSEDED_DAYS", 30, minimum=1)
AVATAR_FILES_X_ACCEL_REDIRECT = env_str("AVATAR_FILES_X_ACCEL_REDIRECT")
if AVATAR_FILES_S3_BUCKET:
    _avatar_files: dict[str, Any] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AVATAR_FILES_S3_BUCKET,
            "endpoint_url": AVATAR_FILES_S3_ENDPOINT_URL,
            "region_name": env_str("AWS_S3_REGION_NAME") or env_str("AWS_DEFAULT_REGION"),
            # Private objects, reached only through presigned URLs.
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": AVATAR_FILE_URL_MAX_AGE_SECONDS,
            "signature_version": "s3v4",
            "file_overwrite": True,
            "location": env_str("AVATAR_FILES_S3_PREFIX", ""),
        },
    }
else:
    _avatar_files = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        # No base_url: files are reached through signed links only (monitoring.files).
        "OPTIONS": {"location": str(AVATAR_FILES_ROOT), "directory_permissions_mode": 0o750},
    }
STORAGES["avatar_files"] = _avatar_files

TELEGRAM_BOT_TOKEN = env_str("TELEGRAM_BOT_TOKEN")
TELEGRAM_API_BASE_URL = env_url("TELEGRAM_API_BASE_URL", "https://api.telegram.org/bot")
_staff_chat = env_str("TELEGRAM_STAFF_CHAT_ID")
try:
    TELEGRAM_STAFF_CHAT_ID = int(_staff_chat) if _staff_chat else None
except ValueError:
    raise ImproperlyConfigured(
        f"TELEGRAM_STAFF_CHAT_ID must be a numeric chat id, got {_staff_chat!r}"
    ) from None
OWNER_BOT_LINK = env_url("OWNER_BOT_LINK", None, schemes=("https", "tg"))
OWNER_DELAY_MESSAGE_MINUTES = env_int("OWNER_DELAY_MESSAGE_MINUTES", 30, minimum=1)
_backends = {
    name: f"notifications.backends.{name}.{name.capitalize()}Backend"
    for name in ("telegram", "console", "locmem")
}
_backend_name = env_str("NOTIFICATION_BACKEND", "telegram" if TELEGRAM_BOT_TOKEN else "console")
if _backend_name not in _backends:
    raise ImproperlyConfigured(
        f"NOTIFICATION_BACKEND must be one of {', '.join(_backends)}, got {_backend_name!r}"
    )
NOTIFICATION_BACKEND = _backends[_backend_name]

NOTIFICATION_MAX_ATTEMPTS = env_int("NOTIFICATION_MAX_ATTEMPTS", 6, minimum=1)
NOTIFICATION_RETRY_BASE_SECONDS = env_float("NOTIFICATION_RETRY_BASE_SECONDS", 5.0)
NOTIFICATION_RETRY_MAX_SECONDS = env_float("NOTIFICATION_RETRY_MAX_SECONDS", 600.0)
NOTIFICATION_INLINE_WAIT_SECONDS = env_float("NOTIFICATION_INLINE_WAIT_SECONDS", 0.2)
NOTIFICATION_RELAY_POLL_SECONDS = env_float("NOTIFICATION_RELAY_POLL_SECONDS", 0.5, minimum=0.05)
NOTIFICATION_OUTAGE_FAILURES = env_int("NOTIFICATION_OUTAGE_FAILURES", 5, minimum=2)
NOTIFICATION_OUTAGE_PROBE_SECONDS = env_float("NOTIFICATION_OUTAGE_PROBE_SECONDS", 3.0)
NOTIFICATION_LEASE_SECONDS = env_float("NOTIFICATION_LEASE_SECONDS", 90.0, minimum=0.1)
NOTIFICATION_SEND_TIMEOUT_SECONDS = env_float(
    "NOTIFICATION_SEND_TIMEOUT_SECONDS", 15.0, minimum=0.1
)
NOTIFICATION_PROBE_INTERVAL_SECONDS = env_float("NOTIFICATION_PROBE_INTERVAL_SECONDS", 60.0)
NOTIFICATION_STUCK_HOLD_SECONDS = env_float("NOTIFICATION_STUCK_HOLD_SECONDS", 20.0)
NOTIFICATION_STUCK_DIGEST_MIN = env_int("NOTIFICATION_STUCK_DIGEST_MIN", 3, minimum=2)
NOTIFICATION_RATE_PER_CHAT_SECONDS = env_float("NOTIFICATION_RATE_PER_CHAT_SECONDS", 1.0)
NOTIFICATION_RATE_GROUP_PER_MINUTE = env_int("NOTIFICATION_RATE_GROUP_PER_MINUTE", 20, minimum=1)
NOTIFICATION_RATE_GLOBAL_PER_SECOND = env_int("NOTIFICATION_RATE_GLOBAL_PER_SECOND", 25, minimum=1)

ETA_HISTORY_SIZE = env_int("ETA_HISTORY_SIZE", 200, minimum=10)
ETA_MIN_HISTORY = env_int("ETA_MIN_HISTORY", 10, minimum=1)
ETA_DEFAULT_PORTRAIT_MINUTES = env_float("ETA_DEFAULT_PORTRAIT_MINUTES", 25.0, minimum=0.1)
ETA_DEFAULT_STYLE_MINUTES = env_float("ETA_DEFAULT_STYLE_MINUTES", 8.0, minimum=0.1)
ETA_DEFAULT_SECONDS_PER_POSITION = env_float("ETA_DEFAULT_SECONDS_PER_POSITION", 60.0, minimum=1.0)
OWNER_PROGRESS_MESSAGES = env_bool("OWNER_PROGRESS_MESSAGES", True)
OWNER_PROGRESS_EDIT_SECONDS = env_int("OWNER_PROGRESS_EDIT_SECONDS", 60, minimum=5)

RETENTION_WEBHOOK_DELIVERY_DAYS = env_int("RETENTION_WEBHOOK_DELIVERY_DAYS", 30, minimum=1)
RETENTION_FINISHED_EVENTS_DAYS = env_int("RETENTION_FINISHED_EVENTS_DAYS", 180, minimum=1)
RETENTION_CHECK_RUN_DAYS = env_int("RETENTION_CHECK_RUN_DAYS", 7, minimum=1)
RETENTION_TASK_RESULT_DAYS = env_int("RETENTION_TASK_RESULT_DAYS", 7, minimum=1)
RETENTION_REFUSED_WEBHOOK_HOURS = env_int("RETENTION_REFUSED_WEBHOOK_HOURS", 24, minimum=1)

API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 120, minimum=1)
API_CALL_LOG_FLUSH_SECONDS = env_float("API_CALL_LOG_FLUSH_SECONDS", 1.0)
API_IDEMPOTENCY_KEY_HOURS = env_int("API_IDEMPOTENCY_KEY_HOURS", 48, minimum=24)
RETENTION_API_CALL_DAYS = env_int("RETENTION_API_CALL_DAYS", 30, minimum=1)
EVENT_CALLBACK_MAX_AGE_HOURS = env_int("EVENT_CALLBACK_MAX_AGE_HOURS", 24, minimum=1)
EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS = env_bool("EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS", False)
EVENT_CALLBACK_TIMEOUT_SECONDS = env_float("EVENT_CALLBACK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
EVENT_CALLBACK_RETRY_BASE_SECONDS = env_float("EVENT_CALLBACK_RETRY_BASE_SECONDS", 30.0)
EVENT_CALLBACK_RETRY_MAX_SECONDS = env_float("EVENT_CALLBACK_RETRY_MAX_SECONDS", 3600.0)

REDIS_URL = env_url("REDIS_URL", None, schemes=("redis", "rediss", "unix"))
Q_WORKERS = env_int("Q_WORKERS", 2, minimum=1, maximum=64)
# Below Docker's 10 s before its SIGKILL.
WORKER_STOP_GRACE_SECONDS = env_float("WORKER_STOP_GRACE_SECONDS", 8.0, minimum=3.0)
# A task may run at most `timeout` seconds; `retry` is larger so a live task is never
# handed to a second worker while the first still runs it.
Q_CLUSTER: dict[str, Any] = {
    "name": "avatars",
    "workers": Q_WORKERS,
    "timeout": env_int("Q_TIMEOUT_SECONDS", 55, minimum=5),
    "retry": env_int("Q_RETRY_SECONDS", 120, minimum=10),
    "max_attempts": 3,
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "poll": 0.2,
    # One task waits in a cluster's local queue (django-q2's default is workers²): a
    # stopping worker puts what it prefetched back, and on a kill -9 only this much
    # stays locked until `retry` (monitoring/worker/cluster.py).
    "queue_limit": 1,
    "label": "Django Q2",
}
# Its own queue (monitoring/worker/): a message never waits behind a long check run.
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
    }
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
if Q_CLUSTER["retry"] <= Q_CLUSTER["timeout"]:
    raise ImproperlyConfigured("Q_RETRY_SECONDS must be larger than Q_TIMEOUT_SECONDS")

METRICS_TOKEN = env_str("METRICS_TOKEN")
if METRICS_TOKEN is not None and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters long")
METRICS_ALLOWED_IPS = env_networks("METRICS_ALLOWED_IPS", [])
# Alert thresholds, exported as gauges for deploy/prometheus/alerts.yml to compare against.
OWNER_TOLD_OBJECTIVE_SECONDS = env_int("OWNER_TOLD_OBJECTIVE_SECONDS", 120, minimum=1)
STUCK_TRAININGS_ALERT_THRESHOLD = env_int("STUCK_TRAININGS_ALERT_THRESHOLD", 5, minimum=0)
EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD = env_int(
    "EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD", 3, minimum=1
)
WEBHOOK_REFUSALS_ALERT_PER_MINUTE = env_float("WEBHOOK_REFUSALS_ALERT_PER_MINUTE", 10.0)
WORKER_HEARTBEAT_LATE_SECONDS = env_int("WORKER_HEARTBEAT_LATE_SECONDS", 60, minimum=15)
SENTRY_DSN = env_str("SENTRY_DSN")
SENTRY_ENVIRONMENT = env_str("SENTRY_ENVIRONMENT", "production")
SENTRY_TRACES_SAMPLE_RATE = env_float("SENTRY_TRACES_SAMPLE_RATE", 0.0)
if SENTRY_TRACES_SAMPLE_RATE > 1.0:
    raise ImproperlyConfigured("SENTRY_TRACES_SAMPLE_RATE must be between 0 and 1")
if SENTRY_DSN:
    from avatarsite import error_tracking

    error_tracking.start(
        SENTRY_DSN, environment=SENTRY_ENVIRONMENT, traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE
    )

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}"
    )
LOG_FORMAT = env_str("LOG_FORMAT", "text").lower()
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "avatarsite.log_redaction.RedactSecrets"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "avatarsite.log_redaction.JsonFormatter"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["redact_secrets"],
        }
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
