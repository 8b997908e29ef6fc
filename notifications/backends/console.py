"""Prints messages to standard output: the default when no bot token is configured."""

from __future__ import annotations

import itertools
import sys

from notifications.backends.base import BaseBackend

_message_ids = itertools.count(1)


class ConsoleBackend(BaseBackend):
    name = "console"

    def _send(self, chat_id: int, text: str, silent: bool) -> int:
        message_id = next(_message_ids)
        how = ", silent" if silent else ""
        self._write(f"--- Telegram message to chat {chat_id} (#{message_id}{how}) ---\n{text}\n")
        return message_id

    def _edit(self, chat_id: int, message_id: int, text: str) -> None:
        self._write(f"--- Telegram message #{message_id} in chat {chat_id} edited ---\n{text}\n")

    def _write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
