"""The README's commands in a second terminal while ./bin/run runs, and the demo's staff login."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support import fetch, free_port, start_bin_run, user_shell, wait_for

ROOT = Path(__file__).resolve().parent.parent


def admin_login(base: str, username: str, password: str) -> requests.Response:
    session = requests.Session()
    session.get(f"{base}/admin/login/", timeout=10).raise_for_status()
    return session.post(
        f"{base}/admin/login/?next=/admin/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "next": "/admin/",
        },
        headers={"Referer": f"{base}/admin/login/"},
        timeout=10,
    )


def logged_in(response: requests.Response) -> bool:
    return response.status_code == 200 and 'id="logout-form"' in response.text


@pytest.mark.slow
def test_manage_commands_work_in_another_terminal_and_the_demo_banner_login_works(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    state_dir = tmp_path / "var"
    # A user's shell: no fal key (the demo), SQLite, nothing of the tests'.
    shell = {**user_shell(tmp_path), "STATE_DIR": str(state_dir)}
    # Only ./bin/run is told the database: ./bin/manage must find it in the profile.
    database_url = shell.pop("DATABASE_URL")
    process, output, reader = start_bin_run(
        {**shell, "PORT": str(port), "DATABASE_URL": database_url}, start_new_session=True
    )
    try:
        wait_for(lambda: any("Ctrl-C stops" in line for line in output), 180, "the banner")
        text = "".join(output)

        # The system checks print once, the banner comes after the start-up noise.
        assert text.count("(avatarsite.W004)") == 1, text  # no bot token in the demo
        banner_at = text.index("Avatar training monitor is running")
        assert text.index("(avatarsite.W004)") < banner_at
        assert text.index("Мониторинг восстановлен") < banner_at
        assert text.index("Starting development server") < banner_at
        username, password = re.search(r"Log in:\s+(\S+) / (\S+)", text).groups()
        assert "./bin/manage createsuperuser" in text[banner_at:]

        # Another terminal: only the user's shell, run from another directory.
        def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(ROOT / "bin" / "manage"), *args],
                cwd=tmp_path,
                env={**shell, **env},
                capture_output=True,
                text=True,
                timeout=120,
            )

        listed = manage("check_avatar_db", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "Traceback" not in listed.stderr
        # The demo's emulator variables came along: no "No fal key" warning.
        assert "avatarsite.W001" not in listed.stderr, listed.stderr
        names = {row["name"] for row in json.loads(listed.stdout)}
        assert "Demo portrait (completes)" in names

        created = manage(
            "createsuperuser",
            "--noinput",
            DJANGO_SUPERUSER_USERNAME="second-terminal",
            DJANGO_SUPERUSER_PASSWORD="correct-horse-battery-staple-42",
            DJANGO_SUPERUSER_EMAIL="ops@example.com",
        )
        assert created.returncode == 0, created.stderr
        assert "Superuser created successfully" in created.stdout

        # Both logins reach the admin of the running server; a wrong password does not.
        assert logged_in(admin_login(base, username, password))
        assert logged_in(admin_login(base, "second-terminal", "correct-horse-battery-staple-42"))
        assert not logged_in(admin_login(base, username, password + "x"))

        # The password is made once per setup and kept only for its owner.
        login_file = state_dir / "demo" / "staff-login"
        assert login_file.read_text().strip() == password
        assert login_file.stat().st_mode & 0o077 == 0
        assert (state_dir / "local.env").stat().st_mode & 0o077 == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    reader.join(timeout=5)
    assert fetch(f"{base}/admin/login/") is None


def test_manage_without_a_local_profile_says_what_to_do(tmp_path):
    result = subprocess.run(
        [str(ROOT / "bin" / "manage"), "check"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "STATE_DIR": str(tmp_path / "none")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "start ./bin/run once" in result.stderr
    assert "Traceback" not in result.stderr
