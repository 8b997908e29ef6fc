"""The API call log (``ApiCall``), written in batches: a statement per call cost a third
of ``GET /avatars/{id}``'s throughput (bench/api.py). docs/api.md#the-call-log-and-the-rate-limit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from contextlib import nullcontext
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection, transaction

from monitoring.api.models import ApiCall

logger = logging.getLogger("monitoring")

BATCH = 200

_lock = threading.Lock()
_pending: list[ApiCall] = []
_wake = threading.Event()
_writer_pid: int | None = None  # the process whose thread writes (a fork starts its own)


def record(call: ApiCall) -> None:
    """Keep ``call`` for the next batch, or write it now: with ``API_CALL_LOG_FLUSH_SECONDS``
    0, or inside a transaction (in a savepoint that never breaks it)."""
    if connection.in_atomic_block or not settings.API_CALL_LOG_FLUSH_SECONDS:
        try:
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                call.save(force_insert=True)
        except Exception:
            logger.exception("Could not record API call %s %s", call.method, call.path)
        return
    with _lock:
        _pending.append(call)
        waiting = len(_pending)
    _start_writer()
    if waiting >= BATCH:
        _wake.set()


def pending(client_id: int, since: datetime) -> int:
    """How many of ``client_id``'s calls since ``since`` wait in this process."""
    with _lock:
        return sum(1 for c in _pending if c.client_id == client_id and c.at >= since)


def flush() -> int:
    """Write what waits, in one statement; returns how many rows. Never raises: a batch the
    database refuses is tried again twice (a restart, a lost connection), then dropped."""
    with _lock:
        # Taken out before they are written: counted at most once by ``pending``.
        batch = _pending[:]
        _pending.clear()
    if not batch:
        return 0
    try:
        ApiCall.objects.bulk_create(batch)
    except Exception:
        for call in batch:
            call._log_tries = getattr(call, "_log_tries", 0) + 1  # type: ignore[attr-defined]
        again = [c for c in batch if c._log_tries < 3]  # type: ignore[attr-defined]
        logger.exception(
            "Could not write %s API call records (%s kept for another try)", len(batch), len(again)
        )
        with _lock:
            _pending[:0] = again
        return 0
    return len(batch)


def _write_forever() -> None:
    written_at = time.monotonic()
    while True:
        # Short naps: a change of the setting (tests) counts from the next one.
        woken = _wake.wait(0.1)
        if not woken and time.monotonic() - written_at < settings.API_CALL_LOG_FLUSH_SECONDS:
            continue
        _wake.clear()
        written_at = time.monotonic()
        close_old_connections()  # this thread's own connection, checked like a request's
        if not flush():
            connection.close()  # idle: hold no connection while there is nothing to write


def _start_writer() -> None:
    global _writer_pid
    with _lock:
        if _writer_pid == os.getpid():
            return
        _writer_pid = os.getpid()
    threading.Thread(target=_write_forever, name="api-call-log", daemon=True).start()
    atexit.register(flush)
