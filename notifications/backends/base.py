"""The contract between the delivery module and a backend: a receipt or a classified error.

Backends are chosen like Django's email backends (settings.NOTIFICATION_BACKEND):
``telegram``, ``console`` (the default without a token) or ``locmem`` (tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class SendReceipt:
    message_id: int | None


class SendError(Exception):
    """Base of the classified failures. ``str()`` is safe to store and show (no token)."""


class RetryLater(SendError):
    """Flood control: try again after ``retry_after`` seconds. Not a failed attempt."""

    def __init__(self, retry_after: float, description: str = ""):
        self.retry_after = retry_after
        super().__init__(description or f"flood control: retry after {retry_after:g} s")


class RecipientUnreachable(SendError):
    """Blocked, deactivated, never pressed Start, kicked: permanent for this recipient."""


class ChatMoved(SendError):
    """The group became a supergroup with a new id."""

    def __init__(self, new_chat_id: int):
        self.new_chat_id = new_chat_id
        super().__init__(f"chat migrated to {new_chat_id}")


class Rejected(SendError):
    """Telegram refused the message itself (bad request): retrying cannot help."""


class MessageGone(Rejected):
    """An edit of a message the owner deleted, or one too old to edit: stop editing it."""


class TokenRejected(SendError):
    """The bot token (or the base URL) is wrong: pause sending, alert staff."""


class Transient(SendError):
    """Timeouts, connection errors, 5xx: retry with backoff (a read timeout may hide a message
    that did arrive: the Bot API has no idempotency key)."""


Ready = Callable[[], None] | None


class BaseBackend:
    """``ready()`` takes the rate-limit slot right before the request goes out; it may wait,
    or raise to abandon the send. Local backends implement ``_send``/``_edit``."""

    def send(
        self, chat_id: int, text: str, *, ready: Ready = None, silent: bool = False
    ) -> SendReceipt:
        if ready is not None:
            ready()
        return SendReceipt(self._send(chat_id, text, silent))

    def edit(self, chat_id: int, message_id: int, text: str, *, ready: Ready = None) -> SendReceipt:
        """Replace a sent message's text; "not modified" is a success, a gone one ``MessageGone``."""
        if ready is not None:
            ready()
        self._edit(chat_id, message_id, text)
        return SendReceipt(message_id)

    def _send(self, chat_id: int, text: str, silent: bool) -> int:  # pragma: no cover
        raise NotImplementedError

    def _edit(self, chat_id: int, message_id: int, text: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def probe(self) -> None:
        """Check the credentials (raise ``TokenRejected`` if refused); used to resume sending."""


def get_backend() -> BaseBackend:
    """A fresh backend per call: nothing (no HTTP client, no event loop) outlives a send."""
    return import_string(settings.NOTIFICATION_BACKEND)()
