"""Fixtures for Telegram: the fake Bot API on loopback, and running queued deliveries.

``telegram`` points the real telegram backend (python-telegram-bot over HTTP) at
the fake, with a staff chat and delivery settings short enough for tests.
``run_deliveries`` executes the tasks that were really enqueued on the
notifications cluster's broker, the way a worker would, without its scheduler.
"""

from __future__ import annotations

import pytest

from fakes.telegram_api import FakeTelegramAPI

STAFF_CHAT_ID = -1001234567890


@pytest.fixture(scope="session")
def telegram_api():
    fake = FakeTelegramAPI(token="7700000077:TEST-token-AAAbbbCCCdddEEEfff").start()
    yield fake
    fake.stop()


@pytest.fixture
def telegram(telegram_api, settings):
    telegram_api.reset(token="7700000077:TEST-token-AAAbbbCCCdddEEEfff")
    settings.NOTIFICATION_BACKEND = "notifications.backends.telegram.TelegramBackend"
    settings.TELEGRAM_BOT_TOKEN = telegram_api.token
    settings.TELEGRAM_API_BASE_URL = telegram_api.base_url
    settings.TELEGRAM_STAFF_CHAT_ID = STAFF_CHAT_ID
    settings.NOTIFICATION_SEND_TIMEOUT_SECONDS = 5.0
    settings.NOTIFICATION_RETRY_BASE_SECONDS = 0.05
    settings.NOTIFICATION_PROBE_INTERVAL_SECONDS = 0.0
    settings.NOTIFICATION_STUCK_HOLD_SECONDS = 0.0
    # Tests send to many chats quickly; the limiter has its own tests.
    settings.NOTIFICATION_RATE_PER_CHAT_SECONDS = 0.0
    settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND = 1000
    settings.NOTIFICATION_RATE_GROUP_PER_MINUTE = 1000
    return telegram_api


@pytest.fixture
def run_deliveries(settings):
    """Run every task queued on the notifications cluster (and those they queue) once."""
    from django.utils.module_loading import import_string
    from django_q.models import OrmQ

    def run() -> list[str]:
        results = []
        while True:
            queued = list(OrmQ.objects.filter(key=settings.NOTIFICATION_CLUSTER).order_by("id"))
            if not queued:
                return results
            for package in queued:
                task = package.task
                package.delete()
                results.append(import_string(task["func"])(*task["args"], **task["kwargs"]))

    return run


@pytest.fixture
def drain(run_deliveries):
    """Relay and run deliveries, as the notifications cluster does, until ``done()``.

    Returns what the delivery tasks answered, in order.
    """
    import time

    from notifications import delivery

    def run(done, timeout: float = 10.0) -> list[str]:
        results: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            results += run_deliveries()
            if done() or time.monotonic() > deadline:
                return results
            delivery.relay_once()
            time.sleep(0.02)

    return run
