"""What every benchmark needs: a throwaway PostgreSQL database and a free loopback port."""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlsplit, urlunsplit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server(server_url: str) -> str:
    # Query options (e.g. ?server_side_binding=true) are Django's, not libpq's.
    return urlunsplit(urlsplit(server_url)._replace(query=""))


def create_database(server_url: str, prefix: str) -> tuple[str, str]:
    """Create ``<prefix>_<time>_<pid>`` on the server; return its name and URL."""
    import psycopg

    name = f"{prefix}_{int(time.time())}_{os.getpid()}"
    with psycopg.connect(_server(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_server(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def production_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a production-like process (DEBUG off) on the scratch database."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "avatarsite.settings",
        "DEBUG": "0",
        "SECRET_KEY": "bench-secret-key-0123456789-0123456789-0123456789-0123456789",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "FAL_KEY": "bench-key-id:bench-key-secret",
        "LOG_LEVEL": "WARNING",
        "PTB_TIMEDELTA": "true",
        **overrides,
    }


def stop_group(process, timeout: float = 20) -> None:
    """SIGTERM a server started with ``start_new_session=True`` (and its children), then
    SIGKILL the group if it has not stopped within ``timeout`` seconds."""
    import signal
    import subprocess

    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def create_active_trainings(n: int, *, first_telegram_id: int, training_fields, **avatar_fields):
    """N avatars in training, each with one attempt as its current training, in bulk.

    ``training_fields(i)`` gives the i-th attempt's fields (request id, sub-state, dates);
    ``avatar_fields`` are set on every avatar. Returns (avatars, trainings).
    """
    from monitoring.models import Avatar, AvatarStatus, Owner, Training

    owners = Owner.objects.bulk_create(
        [
            Owner(telegram_id=first_telegram_id + i, username=f"bench{i}")
            for i in range(max(1, n // 10))
        ]
    )
    avatars = Avatar.objects.bulk_create(
        [
            Avatar(
                owner=owners[i % len(owners)],
                name=f"Bench {i}",
                trigger_word="ohwx",
                images_url="https://example.com/bench.zip",
                status=AvatarStatus.TRAINING,
                **{k: v(i) if callable(v) else v for k, v in avatar_fields.items()},
            )
            for i in range(n)
        ],
        batch_size=2000,
    )
    trainings = Training.objects.bulk_create(
        [Training(avatar=avatar, **training_fields(i)) for i, avatar in enumerate(avatars)],
        batch_size=2000,
    )
    for avatar, training in zip(avatars, trainings, strict=True):
        avatar.current_training = training
    Avatar.objects.bulk_update(avatars, ["current_training"], batch_size=2000)
    return avatars, trainings


def submit_through_transitions(
    n: int,
    *,
    first_telegram_id: int,
    endpoint: str,
    request_id,
    owners: int = 50,
    name: str = "bench {i}",
):
    """N avatars started and submitted the way the service does it (the transitions):
    ``request_id(i)`` is the i-th request id fal answered, ``name`` the avatar's name
    (formatted with ``i``). Returns the trainings."""
    from monitoring import transitions
    from monitoring.models import Avatar, EventSource, Owner

    people = [
        Owner.objects.get_or_create(
            telegram_id=first_telegram_id + i, defaults={"username": f"bench{i}"}
        )[0]
        for i in range(owners)
    ]
    trainings = []
    for i in range(n):
        avatar = transitions.create_avatar(
            Avatar(
                owner=people[i % len(people)],
                name=name.format(i=i),
                training_type="portrait",
                trigger_word="ohwx",
                images_url="https://example.com/p.zip",
            ),
            source=EventSource.COMMAND,
        )
        started = transitions.begin_training(
            avatar, endpoint=endpoint, arguments={}, webhook_url="", source=EventSource.COMMAND
        )
        # As the submit stores them: fal answers the submit with both ids.
        transitions.record_submitted(
            started.training,
            request_id=request_id(i),
            gateway_request_id=request_id(i),
            source=EventSource.COMMAND,
        )
        trainings.append(started.training)
    return trainings
