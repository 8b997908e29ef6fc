"""Keeps messages in memory (``locmem.outbox``) for tests, like Django's locmem email backend."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from notifications.backends.base import BaseBackend


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
    def _send(self, chat_id: int, text: str, silent: bool) -> int:
        with _lock:
            message = SentMessage(chat_id, text, next(_message_ids), silent)
            outbox.append(message)
        return message.message_id

    def _edit(self, chat_id: int, message_id: int, text: str) -> None:
        with _lock:
            edits.append(Edit(chat_id, message_id, text))
