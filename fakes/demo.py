"""Demo data for a first run without a fal key: a few avatars trained on the fal emulator.

    python -m fakes.fal_emulator --state-dir DIR &       # the emulator (writes DIR/emulator.env)
    python -m fakes.demo --env-file DIR/emulator.env     # these avatars, started on it
    python -m fakes.demo --staff-login DIR/staff-login   # and a staff login for the admin

Every owner and avatar it creates is named "Demo ..."; it does nothing when demo
avatars already exist. The staff login (user "demo", a random password made once per
state directory and kept in that file, readable by its owner only) lets a newcomer
into the admin with no extra step; ./bin/run prints it in its banner. The emulator scripts jobs from their images URL: "fail" fails,
"stuck" stays in the queue, anything else queues ~10 s, trains ~30 s and completes.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

DEMO_AVATARS = [
    # (name, training type, trigger, images URL, start it?)
    (
        "Demo portrait (completes)",
        "portrait",
        "ohwx person",
        "https://example.com/demo/anna.zip",
        True,
    ),
    (
        "Demo style (completes)",
        "style",
        "demostyle",
        "https://example.com/demo/watercolor.zip",
        True,
    ),
    (
        "Demo portrait (fails)",
        "portrait",
        "ohwx person",
        "https://example.com/demo/fail-blurry.zip",
        True,
    ),
    (
        "Demo portrait (gets stuck)",
        "portrait",
        "ohwx person",
        "https://example.com/demo/stuck.zip",
        True,
    ),
    (
        "Demo portrait (ready to start)",
        "portrait",
        "ohwx person",
        "https://example.com/demo/ivan.zip",
        False,
    ),
]
DEMO_OWNERS = [
    (900_000_001, "demo_anna", "Demo Anna", "ru"),
    (900_000_002, "demo_john", "Demo John", "en"),
]


def load_env_file(path: Path) -> None:
    """Export the emulator's variables before anything imports fal_client."""
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip():
            os.environ[name.strip()] = value.strip()


def create_demo() -> list[str]:
    """Create and start the demo avatars; returns what was done, line by line."""
    from monitoring import transitions
    from monitoring.models import Avatar, EventSource, Owner
    from monitoring.trainings import start_training

    if Avatar.objects.filter(name__startswith="Demo ").exists():
        return ["Demo avatars already exist: nothing to do."]
    owners = [
        Owner.objects.get_or_create(
            telegram_id=telegram_id,
            defaults={"username": username, "display_name": display, "language": language},
        )[0]
        for telegram_id, username, display, language in DEMO_OWNERS
    ]
    lines = []
    for index, (name, training_type, trigger, images_url, start) in enumerate(DEMO_AVATARS):
        avatar = transitions.create_avatar(
            Avatar(
                owner=owners[index % len(owners)],
                name=name,
                training_type=training_type,
                trigger_word=trigger,
                images_url=images_url,
            ),
            source=EventSource.COMMAND,
        )
        if start:
            outcome = start_training(avatar, source=EventSource.COMMAND)
            request_id = outcome.training.fal_request_id if outcome.training else None
            lines.append(f"DEMO: started #{avatar.pk} {name} (fal request {request_id or '-'})")
        else:
            lines.append(f"DEMO: created #{avatar.pk} {name}, ready for a staff start")
    return lines


DEMO_STAFF_USERNAME = "demo"


def ensure_staff_login(path: Path) -> tuple[str, str]:
    """The demo's staff user, with the password kept in ``path`` (made on first use)."""
    from django.contrib.auth import get_user_model

    if path.exists():
        password = path.read_text().strip()
    else:
        password = secrets.token_urlsafe(12)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(password + "\n")
    user, _created = get_user_model().objects.get_or_create(
        username=DEMO_STAFF_USERNAME, defaults={"is_staff": True, "is_superuser": True}
    )
    if not (user.is_staff and user.is_superuser and user.is_active) or not user.check_password(
        password
    ):
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
    return DEMO_STAFF_USERNAME, password


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create demo avatars trained on the fal emulator.")
    parser.add_argument("--env-file", type=Path, help="the emulator's emulator.env")
    parser.add_argument(
        "--staff-login", type=Path, help="make a demo staff user; its password is kept here"
    )
    args = parser.parse_args(argv)
    if args.env_file:
        load_env_file(args.env_file)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "avatarsite.settings")
    if not os.environ.get("FAL_QUEUE_RUN_HOST", "").startswith("127.0.0.1"):
        raise SystemExit(
            "The demo only talks to the fal emulator: give --env-file DIR/emulator.env "
            "(python -m fakes.fal_emulator --state-dir DIR) or export FAL_QUEUE_RUN_HOST"
        )
    # The emulator accepts any key of the right shape; a real one is never needed here.
    os.environ.setdefault("FAL_KEY", "demo-key-id:demo-key-secret")

    import django

    django.setup()
    for line in create_demo():
        print(line)
    if args.staff_login:
        username, _password = ensure_staff_login(args.staff_login)
        print(
            f"DEMO: staff user {username!r} can log in to the admin (password in {args.staff_login})"
        )


if __name__ == "__main__":
    main()
