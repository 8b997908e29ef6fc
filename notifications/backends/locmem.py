"""Keeps messages in memory (``locmem.outbox``) for tests, like Django's locmem email backend."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from notifications.backends.base import BaseBackend, SendReceipt


@dataclass(frozen=True)
class SentMessage:
    chat_id: int
    text: str
    message_id: int
    silent: bool = False


@dataclass(frozen=True)
class Edit:
    chat_id: int
    message_id: int
    text: str


outbox: list[SentMessage] = []
edits: list[Edit] = []
_lock = threading.Lock()
_message_ids = itertools.count(1)


class LocmemBackend(BaseBackend):
    name = "locmem"

    def send(
        self,
        chat_id: int,
        text: str,
        *,
        ready: Callable[[], None] | None = None,
        silent: bool = False,
    ) -> SendReceipt:
        if ready is not None:
            ready()
        with _lock:
            message = SentMessage(chat_id, text, next(_message_ids), silent)
            outbox.append(message)
        return SendReceipt(message.message_id)

    def edit(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        *,
        ready: Callable[[], None] | None = None,
    ) -> SendReceipt:
        if ready is not None:
            ready()
        with _lock:
            edits.append(Edit(chat_id, message_id, text))
        return SendReceipt(message_id)
