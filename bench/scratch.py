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
