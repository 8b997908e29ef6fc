"""Record which client created or started each avatar, where the call log still says so.

Clients now see only their own avatars (issue 30). Avatars made through the API were
linked to their client as they were made (``ClientAvatar``); one the link missed
(a process that died between the two) is found here in the idempotency keys and the
call log: the earliest client that created or started it gets it. An avatar neither
names belongs to no client (staff-created avatars never do), and a client with the
``avatars:all`` scope still sees it.
"""

import re

from django.db import migrations

STARTED = re.compile(r"^/api/v1/avatars/(\d+)/trainings/?$")


def record_clients(apps, schema_editor):
    Avatar = apps.get_model("monitoring", "Avatar")
    ClientAvatar = apps.get_model("api", "ClientAvatar")
    IdempotencyKey = apps.get_model("api", "IdempotencyKey")
    ApiCall = apps.get_model("api", "ApiCall")

    first: dict[int, tuple] = {}  # avatar id -> (when, client id), the earliest kept

    def note(avatar_id: int, when, client_id: int) -> None:
        if avatar_id not in first or when < first[avatar_id][0]:
            first[avatar_id] = (when, client_id)

    for client_id, avatar_id, when in IdempotencyKey.objects.filter(
        avatar__isnull=False
    ).values_list("client_id", "avatar_id", "created_at"):
        note(avatar_id, when, client_id)
    calls = ApiCall.objects.filter(method="POST", status=201, path__startswith="/api/v1/avatars/")
    for client_id, path, when in calls.values_list("client_id", "path", "at").iterator():
        match = STARTED.match(path)
        if match:
            note(int(match.group(1)), when, client_id)

    linked = set(ClientAvatar.objects.values_list("avatar_id", flat=True))
    wanted = set(first) - linked
    existing = set(Avatar.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    ClientAvatar.objects.bulk_create(
        [
            ClientAvatar(
                avatar_id=avatar_id, client_id=first[avatar_id][1], created_at=first[avatar_id][0]
            )
            for avatar_id in sorted(existing)
        ]
    )


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0002_self_healing"),
        ("monitoring", "0011_owner_reachability_moves_to_notifications"),
    ]

    operations = [migrations.RunPython(record_clients, migrations.RunPython.noop, elidable=True)]
