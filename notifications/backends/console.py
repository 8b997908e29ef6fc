"""Prints messages to standard output: the default when no bot token is configured."""

from __future__ import annotations

import itertools

from notifications.backends.base import BaseBackend

_message_ids = itertools.count(1)


class ConsoleBackend(BaseBackend):
    def _send(self, chat_id: int, text: str, silent: bool) -> int:
        message_id = next(_message_ids)
        how = ", silent" if silent else ""
        print(
            f"--- Telegram message to chat {chat_id} (#{message_id}{how}) ---\n{text}", flush=True
        )
        return message_id

    def _edit(self, chat_id: int, message_id: int, text: str) -> None:
        print(
            f"--- Telegram message #{message_id} in chat {chat_id} edited ---\n{text}", flush=True
        )
