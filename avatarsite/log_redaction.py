"""The one redaction of secrets: for every log record, and for every text fal sends us.

Our own keys and tokens, and anything shaped like a fal key, are removed before a line
is logged or fal's text is stored, so no key fal echoes back reaches the API, the
admin, the staff chat or the database. See docs/configuration.md#secrets.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import pythonjsonlogger.json

REDACTED = "[redacted]"


def known_secrets() -> list[str]:
    from django.conf import settings

    names = ("FAL_KEY", "FAL_ADMIN_KEY", "TELEGRAM_BOT_TOKEN", "METRICS_TOKEN", "HEALTHZ_TOKEN")
    values = [getattr(settings, name, None) for name in (*names, "SECRET_KEY")]
    # The avatar_files storage's S3 secret (boto3 reads it from the environment).
    values += [os.environ.get(name) for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    secrets = {value for value in values if value and len(value) >= 6}
    # "key_id:key_secret" (fal), "bot_id:secret" (Telegram): the part after the colon is a
    # secret on its own; the part before (a public id) is left alone, so that chat ids and
    # other numbers that contain it are not mangled.
    secrets |= {part for value in secrets if len(part := value.partition(":")[2]) >= 6}
    return sorted(secrets, key=len, reverse=True)


# Links to kept avatar files are secrets too (monitoring.files): the signature of a
# presigned S3 URL, and the token of our signed /files/<token>/<name> links.
_LINK_SECRETS = re.compile(
    r"(?i)((?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature)=)[^&\s\"'<>]+"
    r"|(/files/)\.?[A-Za-z0-9_-]+:[A-Za-z0-9_-]+:[A-Za-z0-9_-]+(?=/)"
)


# Secrets recognised by their shape, not by being ours: a fal key (a UUID key id and its
# secret), a credential after "Key" as in fal's Authorization header, and the API's own
# client tokens and callback secrets (monitoring.api.tokens).
_SHAPES = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r":[A-Za-z0-9_\-]{8,}"
    r"|(?<=Key )[^\s:\"']+:[^\s\"',;]+"
    r"|\batm_[A-Za-z0-9_\-]{20,}"
    r"|\bwhsec_[A-Za-z0-9+/=]{20,}"
)


def redact(text: str) -> str:
    for secret in known_secrets():
        text = text.replace(secret, REDACTED)
    return _SHAPES.sub(REDACTED, _LINK_SECRETS.sub(lambda m: (m[1] or m[2]) + REDACTED, text))


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_value(value: Any) -> Any:
    """Every string inside dicts, lists and tuples (Sentry events)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    return value


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """``LOG_FORMAT=json``, in unescaped UTF-8 (``grep 'Обучение завершено'`` still finds
    the operator's lines); the traceback and every ``extra`` field are redacted here again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("timestamp", True)
        kwargs.setdefault("json_ensure_ascii", False)
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__("%(levelname)s %(name)s %(message)s", *args, **kwargs)

    def formatException(self, ei: Any) -> str:
        return redact(logging.Formatter.formatException(self, ei))

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return redact_value(log_data)
