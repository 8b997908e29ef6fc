"""Error tracking with Sentry, on when ``SENTRY_DSN`` is set.

Unhandled exceptions in requests and tasks and every ERROR log line become Sentry
events. Each event passes through the same redaction as the logs before it leaves
the process: the fal key and the bot token can sit in an exception message, a
formatted URL or a frame's local variables. Request bodies, cookies and headers such
as Authorization are not sent (``send_default_pii`` off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

from avatarsite.log_redaction import redact_value

if TYPE_CHECKING:
    from sentry_sdk.types import Breadcrumb, Event, Hint


def before_send(event: Event, hint: Hint) -> Event:
    return redact_value(event)


def before_breadcrumb(crumb: Breadcrumb, hint: Hint) -> Breadcrumb:
    # Breadcrumbs are the log lines and HTTP calls before the error: redacted too.
    return redact_value(crumb)


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
            before_send=before_send,
            before_send_transaction=before_send,
            before_breadcrumb=before_breadcrumb,
        )
    except BadDsn as exc:
        # The message does not repeat the DSN: it holds the project's key.
        raise ImproperlyConfigured(
            f"SENTRY_DSN is not a valid Sentry DSN ({exc.__class__.__name__})"
        ) from None
