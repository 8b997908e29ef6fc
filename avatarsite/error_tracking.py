"""Error tracking with Sentry, on when ``SENTRY_DSN`` is set.

Every event and breadcrumb passes through the logs' redaction before it leaves the
process (a key can sit in an exception message, a URL or a frame's locals); request
bodies, cookies and headers such as Authorization are not sent (``send_default_pii`` off).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from avatarsite.log_redaction import redact_value


def redacted(event_or_crumb: Any, hint: Any) -> Any:
    return redact_value(event_or_crumb)


def start(dsn: str, *, environment: str | None, traces_sample_rate: float) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.utils import BadDsn

    try:
        sentry_sdk.init(
            dsn=dsn,
            integrations=[DjangoIntegration()],
            environment=environment,
            traces_sample_rate=traces_sample_rate,
            send_default_pii=False,
            before_send=redacted,
            before_send_transaction=redacted,
            before_breadcrumb=redacted,
        )
    except BadDsn as exc:
        # The message does not repeat the DSN: it holds the project's key.
        raise ImproperlyConfigured(
            f"SENTRY_DSN is not a valid Sentry DSN ({exc.__class__.__name__})"
        ) from None
