"""Prints messages to standard output: the default when no bot token is configured."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable

from notifications.backends.base import BaseBackend, SendReceipt

_message_ids = itertools.count(1)


class ConsoleBackend(BaseBackend):
    name = "console"

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
        message_id = next(_message_ids)
        how = ", silent" if silent else ""
        sys.stdout.write(
            f"--- Telegram message to chat {chat_id} (#{message_id}{how}) ---\n{text}\n"
        )
        sys.stdout.flush()
        return SendReceipt(message_id)

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
        sys.stdout.write(
            f"--- Telegram message #{message_id} in chat {chat_id} edited ---\n{text}\n"
        )
        sys.stdout.flush()
        return SendReceipt(message_id)
