"""The one module that talks to Telegram (python-telegram-bot), and classifies its errors.

One ``Bot`` and connection pool per process, on an event loop in a background thread (no
ORM inside it). The token never leaves this module: error texts are scrubbed.
See docs/operations.md#pace-messages-and-checks-after-a-disturbance.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from datetime import timedelta
from multiprocessing import util as multiprocessing_util
from typing import Any

from django.conf import settings
from telegram import Bot, LinkPreviewOptions, error
from telegram.request import HTTPXRequest

from avatarsite.log_redaction import REDACTED, redact
from notifications.backends import base

# A probe (relay thread) may run while a send (worker thread) is in flight.
_POOL_SIZE = 4
_HTML = {"parse_mode": "HTML", "link_preview_options": LinkPreviewOptions(is_disabled=True)}


class _Connection:
    """One event loop in a daemon thread, owning one Bot and its HTTP connection pool."""

    def __init__(self, token: str, base_url: str, timeout: float) -> None:
        self.key = (os.getpid(), token, base_url, timeout)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="telegram-bot-loop", daemon=True
        )
        self.thread.start()
        self.request = HTTPXRequest(
            connection_pool_size=_POOL_SIZE,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            pool_timeout=timeout,
        )
        # send_message needs no Bot.initialize() (one more getMe round trip).
        self.bot = Bot(
            token, base_url=base_url, request=self.request, get_updates_request=self.request
        )
        self.submit(self.request.initialize(), timeout)

    def submit(self, coroutine: Any, timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.submit(self.request.shutdown(), 5)
        except Exception:  # closing at exit: nothing left to tell
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


_connection: _Connection | None = None
_connection_lock = threading.Lock()


def _shared_connection(token: str, base_url: str, timeout: float) -> _Connection:
    """This process's connection; a new one after a fork or a change of settings."""
    global _connection
    key = (os.getpid(), token, base_url, timeout)
    with _connection_lock:
        if _connection is not None and _connection.key == key:
            return _connection
        stale, _connection = _connection, _Connection(token, base_url, timeout)
    if stale is not None and stale.key[0] == os.getpid():
        stale.close()  # settings changed (tests); a parent's connection is not ours to close
    return _connection


def close_connection() -> None:
    """Close this process's Bot API connection (at exit; django-q2 workers exit through
    multiprocessing, which runs its own finalizers instead of ``atexit``)."""
    global _connection
    with _connection_lock:
        current, _connection = _connection, None
    if current is not None and current.key[0] == os.getpid():
        current.close()


atexit.register(close_connection)
multiprocessing_util.Finalize(None, close_connection, exitpriority=10)


class TelegramBackend(base.BaseBackend):
    def __init__(self) -> None:
        self.token = settings.TELEGRAM_BOT_TOKEN or ""
        self.base_url = settings.TELEGRAM_API_BASE_URL
        self.timeout = settings.NOTIFICATION_SEND_TIMEOUT_SECONDS

    def __repr__(self) -> str:  # never the token
        return f"<TelegramBackend {self.base_url}>"

    def send(
        self, chat_id: int, text: str, *, ready: base.Ready = None, silent: bool = False
    ) -> base.SendReceipt:
        message = self._call(
            "send_message",
            ready=ready,
            chat_id=chat_id,
            text=text,
            disable_notification=silent or None,
            **_HTML,
        )
        return base.SendReceipt(getattr(message, "message_id", None))

    def edit(
        self, chat_id: int, message_id: int, text: str, *, ready: base.Ready = None
    ) -> base.SendReceipt:
        try:
            self._call(
                "edit_message_text",
                ready=ready,
                chat_id=chat_id,
                message_id=message_id,
                text=text,
                **_HTML,
            )
        except base.Rejected as exc:
            words = str(exc).lower()
            if "message is not modified" in words:
                return base.SendReceipt(message_id)  # the text is already there: done
            if "message to edit not found" in words or "message can't be edited" in words:
                raise base.MessageGone(str(exc)) from None
            raise
        return base.SendReceipt(message_id)

    def probe(self) -> None:
        self._call("get_me")

    def _call(self, method: str, *, ready: base.Ready = None, **kwargs: Any) -> Any:
        if not self.token:
            raise base.TokenRejected("TELEGRAM_BOT_TOKEN is not set")
        try:
            connection = _shared_connection(self.token, self.base_url, self.timeout)
        except Exception as exc:
            raise self._classify(exc) from None
        if ready is not None:
            ready()  # in this thread (the ORM may be used); its exceptions are the caller's
        try:
            return connection.submit(getattr(connection.bot, method)(**kwargs), self.timeout * 2)
        except Exception as exc:  # anything else is classified, never raised raw
            raise self._classify(exc) from None

    def _classify(self, exc: BaseException) -> base.SendError:
        """Telegram's answer → what it means for us (python-telegram-bot's errors, in this order)."""
        text = str(exc) or exc.__class__.__name__
        text = redact(text.replace(self.token, REDACTED) if self.token else text)
        if isinstance(exc, error.ChatMigrated):
            return base.ChatMoved(int(exc.new_chat_id))
        if isinstance(exc, error.RetryAfter):
            wait = exc.retry_after
            seconds = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
            return base.RetryLater(seconds)
        if isinstance(exc, error.Forbidden):
            return base.RecipientUnreachable(text)
        if isinstance(exc, error.InvalidToken):
            return base.TokenRejected(f"Telegram rejected the bot token or base URL: {text}")
        # BadRequest and TimedOut are NetworkError subclasses: test them first.
        if isinstance(exc, error.BadRequest):
            return base.Rejected(text)
        if isinstance(exc, (error.TimedOut, TimeoutError)):
            return base.Transient(f"timed out: {text}")
        if isinstance(exc, error.NetworkError):
            return base.Transient(text)
        return base.Transient(f"{exc.__class__.__name__}: {text}")
