"""The data migration that moves an owner's Telegram reachability into notifications."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from notifications.models import UnreachableChat

BEFORE = [("monitoring", "0010_fal_outage"), ("notifications", "0006_relay_and_outage_pause")]


@pytest.mark.django_db(transaction=True)
def test_owners_the_bot_could_not_reach_become_unreachable_chats():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Owner = old.get_model("monitoring", "Owner")
    Owner.objects.create(
        telegram_id=5551, reachable=False, unreachable_reason="Forbidden: bot was blocked"
    )
    Owner.objects.create(telegram_id=5552)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    (chat,) = UnreachableChat.objects.all()
    assert (chat.chat_id, chat.reason) == (5551, "Forbidden: bot was blocked")
    assert chat.since is not None
