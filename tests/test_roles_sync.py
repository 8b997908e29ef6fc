"""The Support and Operators groups come from the table in ``monitoring.roles``, after every migrate."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from monitoring import roles

SUPPORT_ACTIONS = {"recheck_avatar", "manage_stuck", "resend_notification"}
OPERATOR_ACTIONS = SUPPORT_ACTIONS | {
    "start_training",
    "cancel_training",
    "fail_avatar",
    "adopt_training",
}


def group_permissions() -> dict[str, set[str]]:
    return {
        group.name: {
            f"{p.content_type.app_label}.{p.codename}"
            for p in group.permissions.select_related("content_type")
        }
        for group in Group.objects.prefetch_related("permissions")
    }


def every_view_permission() -> set[str]:
    return {
        f"{p.content_type.app_label}.{p.codename}"
        for p in Permission.objects.filter(
            content_type__app_label__in=("monitoring", "notifications"),
            codename__startswith="view_",
        ).select_related("content_type")
    }


def test_the_migrated_database_has_both_groups_with_exactly_their_permissions(db):
    # The test database was created by `migrate` on an empty database.
    groups = group_permissions()

    views = every_view_permission()
    assert {"monitoring.view_avatar", "notifications.view_notification"} <= views
    callbacks = set(roles.VIEW_EVENT_CALLBACKS)
    assert groups[roles.SUPPORT] == views | callbacks | {f"monitoring.{c}" for c in SUPPORT_ACTIONS}
    assert groups[roles.OPERATORS] == views | callbacks | {roles.MANAGE_API_CLIENTS} | {
        f"monitoring.{c}" for c in OPERATOR_ACTIONS
    } | {
        "monitoring.add_avatar",
        "monitoring.change_avatar",
        "monitoring.add_owner",
        "monitoring.change_owner",
    }
    # Nobody but a superuser manages users, the task queue or login lockouts.
    for permissions in groups.values():
        assert not {p for p in permissions if p.split(".")[0] in ("auth", "django_q", "axes")}


def test_a_second_migrate_changes_nothing(db):
    before = group_permissions()
    ids_before = sorted(Group.objects.values_list("id", flat=True))

    with CaptureQueriesContext(connection) as queries:
        call_command("migrate", verbosity=0, interactive=False)

    assert group_permissions() == before
    assert sorted(Group.objects.values_list("id", flat=True)) == ids_before
    writes = [
        q["sql"]
        for q in queries.captured_queries
        if "auth_group" in q["sql"] and q["sql"].lstrip().upper().startswith(("INSERT", "DELETE"))
    ]
    assert writes == []
    assert roles.sync_roles() == []


def test_migrate_puts_a_group_back_to_the_table(db):
    support = Group.objects.get(name=roles.SUPPORT)
    support.permissions.add(Permission.objects.get(codename="start_training"))
    support.permissions.remove(Permission.objects.get(codename="recheck_avatar"))
    Group.objects.filter(name=roles.OPERATORS).delete()

    call_command("migrate", verbosity=0, interactive=False)

    groups = group_permissions()
    assert "monitoring.start_training" not in groups[roles.SUPPORT]
    assert "monitoring.recheck_avatar" in groups[roles.SUPPORT]
    assert "monitoring.start_training" in groups[roles.OPERATORS]


def test_a_table_entry_that_names_no_permission_is_an_error(db, monkeypatch):
    monkeypatch.setitem(roles.ROLES, roles.SUPPORT, ("monitoring.recheck_avatr",))

    with pytest.raises(LookupError, match="monitoring.recheck_avatr"):
        roles.sync_roles()


def test_after_a_partial_migrate_the_groups_are_left_as_they_were(db, monkeypatch, capsys):
    before = group_permissions()
    monkeypatch.setitem(roles.ROLES, roles.OPERATORS, ("monitoring.view_avatar",))
    monkeypatch.setitem(roles.ROLES, "Newcomers", ("monitoring.not_created_yet",))

    roles.sync_roles_after_migrate(using="default", verbosity=1)

    assert group_permissions() == before  # Operators untouched, no "Newcomers" group
    assert "not synced" in capsys.readouterr().out
