"""The one module that talks to Telegram (python-telegram-bot), and classifies its errors.

``telegram.Bot`` is async only and its HTTP client belongs to one event loop, so
every send runs in its own new event loop with an ``HTTPXRequest`` created and
closed inside it (a client kept across two loops fails with "Event loop is
closed", which would look like a network error). No ORM inside the coroutine: the
delivery module loads rows before and saves outcomes after.

The token is part of every request URL. It never leaves this module: error texts
are scrubbed before they are raised, and the ``httpx`` logger stays at WARNING
(settings.LOGGING) because it logs request URLs at INFO.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings

from notifications.backends.base import (
    BaseBackend,
    ChatMoved,
    RecipientUnreachable,
    Rejected,
    RetryLater,
    SendError,
    SendReceipt,
    TokenRejected,
    Transient,
)


class TelegramBackend(BaseBackend):
    name = "telegram"

    def __init__(self) -> None:
        self.token = settings.TELEGRAM_BOT_TOKEN or ""
        self.base_url = settings.TELEGRAM_API_BASE_URL
        self.timeout = settings.NOTIFICATION_SEND_TIMEOUT_SECONDS

    def __repr__(self) -> str:  # never the token
        return f"<TelegramBackend {self.base_url}>"

    def send(
        self, chat_id: int, text: str, *, ready: Callable[[], None] | None = None
    ) -> SendReceipt:
        message = self._call(
            "send_message",
            ready=ready,
            chat_id=chat_id,
            text=text,
            parse_mode="HTML",
            disable_web_page_preview=True,
        )
        return SendReceipt(getattr(message, "message_id", None))

    def probe(self) -> None:
        self._call("get_me")

    # --- internals ---------------------------------------------------------------------

    def _call(self, method: str, *, ready: Callable[[], None] | None = None, **kwargs: Any) -> Any:
        """One Bot API call in a fresh event loop with its own HTTP client.

        The same discipline as ``asyncio.run`` (a new loop, the client created and
        closed in it, async generators shut down), spelled out so that ``ready()``
        runs between setting up the client and sending: the loop is not running
        then, so the ORM may be used, and the request follows within a millisecond.
        """
        from telegram import Bot
        from telegram.request import HTTPXRequest

        if not self.token:
            raise TokenRejected("TELEGRAM_BOT_TOKEN is not set")
        loop = asyncio.new_event_loop()
        request = HTTPXRequest(
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            write_timeout=self.timeout,
            pool_timeout=self.timeout,
        )
        try:
            try:
                loop.run_until_complete(request.initialize())
                # send_message needs no Bot.initialize() (one more getMe round trip).
                bot = Bot(
                    self.token,
                    base_url=self.base_url,
                    request=request,
                    get_updates_request=request,
                )
            except Exception as exc:
                raise self._classify(exc) from None
            if ready is not None:
                ready()  # its exceptions are the caller's, not Telegram's
            try:
                return loop.run_until_complete(
                    asyncio.wait_for(getattr(bot, method)(**kwargs), self.timeout * 2)
                )
            except Exception as exc:  # anything else is classified, never raised raw
                raise self._classify(exc) from None
        finally:
            try:
                loop.run_until_complete(request.shutdown())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _scrub(self, text: str) -> str:
        from avatarsite.log_redaction import REDACTED, redact

        if self.token:
            text = text.replace(self.token, REDACTED)
        return redact(text)

    def _classify(self, exc: BaseException) -> SendError:
        """Telegram's answer → what it means for us (python-telegram-bot's mapping of Bot API errors, in this order)."""
        from telegram import error

        text = self._scrub(str(exc) or exc.__class__.__name__)
        if isinstance(exc, error.ChatMigrated):
            return ChatMoved(int(exc.new_chat_id))
        if isinstance(exc, error.RetryAfter):
            wait = exc.retry_after
            seconds = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
            return RetryLater(seconds, f"flood control: retry after {seconds:g} s")
        if isinstance(exc, error.Forbidden):
            return RecipientUnreachable(text)
        if isinstance(exc, error.InvalidToken):
            return TokenRejected(f"Telegram rejected the bot token or base URL: {text}")
        # BadRequest and TimedOut are NetworkError subclasses: test them first.
        if isinstance(exc, error.BadRequest):
            return Rejected(text)
        if isinstance(exc, (error.TimedOut, asyncio.TimeoutError, TimeoutError)):
            return Transient(f"timed out: {text}")
        if isinstance(exc, error.NetworkError):
            return Transient(text)
        return Transient(f"{exc.__class__.__name__}: {text}")
