"""The contract between the delivery module and a backend: a receipt or a classified error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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
    """Timeouts, connection errors, 5xx: retry with backoff.

    A read timeout may hide a message that did arrive; the Bot API has no idempotency
    key, so that one doubt is accepted.
    """


class BaseBackend:
    name = "base"

    def send(
        self,
        chat_id: int,
        text: str,
        *,
        ready: Callable[[], None] | None = None,
        silent: bool = False,
    ) -> SendReceipt:  # pragma: no cover - interface
        """Send ``text``; call ``ready()`` right before the request goes out.

        ``ready`` takes the rate-limit slot (and may wait, or raise to abandon the
        send); calling it as late as possible makes the limits hold for the requests
        as Telegram receives them. Exceptions from ``ready`` propagate unchanged.
        ``silent``: the phone does not ring (``disable_notification``).
        """
        raise NotImplementedError

    def edit(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        *,
        ready: Callable[[], None] | None = None,
    ) -> SendReceipt:  # pragma: no cover - interface
        """Replace the text of a message sent before (an edit never rings).

        "Message is not modified" is a success; a message that is gone (deleted, too
        old) raises ``MessageGone``; the other answers are classified as for ``send``.
        """
        raise NotImplementedError

    def probe(self) -> None:
        """Check the credentials (raise ``TokenRejected`` if refused); used to resume sending."""
