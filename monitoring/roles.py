"""Staff roles as a table, synced into the groups after every ``migrate``.

The table is the truth (a permission added by hand is taken away again). Not a data
migration: Django creates custom permissions only after all migrations have run.
See docs/staff-guide.md#roles.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, router, transaction

SUPPORT = "Support"
OPERATORS = "Operators"

# Every admin action and custom admin page needs one of these (app label "monitoring").
VIEW_AVATAR = "monitoring.view_avatar"
START_TRAINING = "monitoring.start_training"
CANCEL_TRAINING = "monitoring.cancel_training"
FAIL_AVATAR = "monitoring.fail_avatar"
RECHECK_AVATAR = "monitoring.recheck_avatar"
MANAGE_STUCK = "monitoring.manage_stuck"
RESEND_NOTIFICATION = "monitoring.resend_notification"
ADOPT_TRAINING = "monitoring.adopt_training"
MANAGE_API_CLIENTS = "api.manage_api_clients"
# The bot's event callbacks and their attempts (resending one needs RESEND_NOTIFICATION).
VIEW_EVENT_CALLBACKS = ("api.view_eventcallback", "api.view_callbackattempt")

_SUPPORT = (
    # "app.view_*": every view permission of that app, a model added later included.
    "monitoring.view_*",
    "notifications.view_*",
    RECHECK_AVATAR,
    MANAGE_STUCK,
    RESEND_NOTIFICATION,
    *VIEW_EVENT_CALLBACKS,
)
ROLES: dict[str, tuple[str, ...]] = {
    SUPPORT: _SUPPORT,
    # Everything Support may do, and what costs money or changes what fal runs.
    OPERATORS: (
        *_SUPPORT,
        START_TRAINING,
        CANCEL_TRAINING,
        FAIL_AVATAR,
        ADOPT_TRAINING,
        MANAGE_API_CLIENTS,
        # Creating an avatar (and its owner) in the admin: the first step of a start.
        "monitoring.add_avatar",
        "monitoring.change_avatar",
        "monitoring.add_owner",
        "monitoring.change_owner",
    ),
}


def sync_roles(*, using: str = DEFAULT_DB_ALIAS, apps: Any = global_apps) -> list[str]:
    """Make every group of ``ROLES`` hold exactly its permissions; says what changed."""
    group_model = apps.get_model("auth", "Group")
    permissions = apps.get_model("auth", "Permission").objects.using(using)
    changes: list[str] = []
    for name, names in ROLES.items():
        group, created = group_model.objects.using(using).get_or_create(name=name)
        if created:
            changes.append(f"created group {name}")
        wanted: set[int] = set()
        for permission in names:
            app_label, codename = permission.split(".", 1)
            lookup = "codename__startswith" if codename.endswith("*") else "codename"
            rows = permissions.filter(
                content_type__app_label=app_label, **{lookup: codename.rstrip("*")}
            )
            found = set(rows.values_list("id", flat=True))
            if not found:
                # A typo in the table would otherwise silently give a role less than it says.
                raise LookupError(f"role table names {permission!r}, which is not a permission")
            wanted |= found
        current = set(group.permissions.values_list("id", flat=True))
        group.permissions.set(wanted)
        for sign, ids in (("+", wanted - current), ("-", current - wanted)):
            if ids:
                changes.append(f"{name}: {sign}{len(ids)} permission(s)")
    return changes


def sync_roles_after_migrate(
    *, using: str = DEFAULT_DB_ALIAS, apps: Any = global_apps, verbosity: int = 1, **kwargs: Any
) -> None:
    from django.contrib.auth.management import create_permissions

    group_model = apps.get_model("auth", "Group")
    if not router.allow_migrate_model(using, group_model):
        return
    # post_migrate is sent app by app, and an app's permissions are created by its own
    # signal: create those the table refers to now, whatever the order of the apps.
    for label in {name.split(".", 1)[0] for names in ROLES.values() for name in names}:
        create_permissions(global_apps.get_app_config(label), verbosity=0, using=using, apps=apps)
    try:
        with transaction.atomic(using=using):
            changes = sync_roles(using=using, apps=apps)
    except LookupError as exc:
        # A partial migrate (`migrate monitoring 0001` on an empty database) has not
        # created every permission yet: the next full migrate syncs the groups.
        changes = [f"not synced: {exc}"]
    if verbosity >= 1:
        for change in changes:
            print(f"  Roles: {change}")
