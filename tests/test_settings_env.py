"""Configuration from the environment: bad values stop start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FAL_", "TELEGRAM_"))
    }
    base.update({"DJANGO_SETTINGS_MODULE": "avatarsite.settings", **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


PROD = {
    "DEBUG": "0",
    "SECRET_KEY": "a-real-production-secret-key-with-enough-entropy-9f8e7d6c5b4a3210xyz",
    "ALLOWED_HOSTS": "monitor.example.com",
    "PUBLIC_BASE_URL": "https://monitor.example.com",
    "FAL_KEY": "key-id:key-secret",
}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "maybe"),
        ("CHECK_INTERVAL_SECONDS", "sixty"),
        ("DATABASE_URL", "mysql://x/y"),
        ("PUBLIC_BASE_URL", "monitor.example.com"),
        ("TELEGRAM_STAFF_CHAT_ID", "staff"),
        ("LOG_LEVEL", "LOUD"),
        ("SECURE_SSL_REDIRECT", "2"),
    ],
)
def test_a_bad_value_stops_startup_naming_the_variable(name, value, tmp_path):
    result = run_manage(
        "check", env={**PROD, "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3", name: value}
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and name in result.stderr


def test_production_needs_a_secret_key(tmp_path):
    env = {**PROD, "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3", "SECRET_KEY": ""}
    result = run_manage("check", env=env)
    assert result.returncode != 0 and "SECRET_KEY is required" in result.stderr


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_deploy_check_passes_with_the_documented_minimum(database, tmp_path):
    url = (
        f"sqlite:///{tmp_path}/db.sqlite3"
        if database == "sqlite"
        else os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/root")
    )
    env = {**PROD, "DATABASE_URL": url}
    result = run_manage("check", "--deploy", "--fail-level", "ERROR", env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    migrations = run_manage("makemigrations", "--check", "--dry-run", env=env)
    assert migrations.returncode == 0, migrations.stdout + migrations.stderr


def test_missing_configuration_is_reported_by_system_checks(tmp_path):
    env = {
        **PROD,
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "PUBLIC_BASE_URL": "http://x.example",
    }
    env.pop("FAL_KEY")
    result = run_manage("check", env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "avatarsite.E001" in output  # no fal key in production is an error
    assert "avatarsite.W003" in output  # plain http webhook origin is a warning
    assert "avatarsite.W004" in output  # no bot token


def test_fal_api_key_is_accepted_as_the_key():
    result = run_manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.FAL_KEY == 'k:v')",
        env={
            **PROD,
            "FAL_KEY": "",
            "FAL_API_KEY": "k:v",
            "DATABASE_URL": "sqlite:////tmp/unused.sqlite3",
        },
    )
    assert result.stdout.strip().splitlines()[-1] == "True", result.stderr


def test_postgresql_reuses_prepared_statements_unless_turned_off(monkeypatch, tmp_path):
    from avatarsite.env import env_database

    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.example.com:5432/avatars")
    options = env_database("DATABASE_URL", tmp_path / "db.sqlite3")["OPTIONS"]
    assert options["server_side_binding"] is True and options["prepare_threshold"] == 5

    # Behind a pooler in transaction mode that cannot keep them.
    monkeypatch.setenv("DATABASE_PREPARED_STATEMENTS", "0")
    options = env_database("DATABASE_URL", tmp_path / "db.sqlite3").get("OPTIONS", {})
    assert "server_side_binding" not in options and "prepare_threshold" not in options

    monkeypatch.setenv("DATABASE_PREPARED_STATEMENTS", "perhaps")
    with pytest.raises(Exception, match="DATABASE_PREPARED_STATEMENTS"):
        env_database("DATABASE_URL", tmp_path / "db.sqlite3")


@pytest.mark.django_db
@pytest.mark.postgres
def test_a_statement_repeated_on_one_connection_is_prepared_by_postgresql():
    from django.db import connection

    from monitoring.models import Avatar

    for _ in range(6):
        list(Avatar.objects.filter(status="training")[:1])
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any('"monitoring_avatar"' in statement for statement in prepared), prepared
