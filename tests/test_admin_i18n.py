"""The admin follows the staff member's browser language; Russian is compiled and shipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.urls import reverse

from monitoring import transitions

ROOT = Path(__file__).resolve().parent.parent
CHANGELIST = reverse("admin:monitoring_avatar_changelist")


def test_every_string_in_the_code_has_a_russian_translation(tmp_path):
    """Extract the catalogue afresh from a copy of the code: nothing may be missing."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("xgettext"):
        pytest.skip("gettext's xgettext is not installed")
    for name in ("avatarsite", "monitoring", "notifications", "templates", "locale"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "manage.py", tmp_path / "manage.py")
    subprocess.run(
        [sys.executable, "manage.py", "makemessages", "-l", "ru", "--no-obsolete"],
        cwd=tmp_path,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "avatarsite.settings",
            "DEBUG": "1",
            "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3",
        },
        check=True,
        capture_output=True,
    )

    entries = _po_entries(tmp_path / "locale/ru/LC_MESSAGES/django.po")
    untranslated = [msgid for msgid, strs in entries if not all(strs)]
    assert untranslated == [], f"{len(untranslated)} strings lack a Russian translation"


def test_the_avatar_admin_speaks_russian_to_a_russian_browser(admin_client, training_avatar):
    _avatar, training = training_avatar(request_id="req-ru")
    transitions.flag_stuck(training, reason="в очереди 2 часа")

    page = admin_client.get(CHANGELIST, HTTP_ACCEPT_LANGUAGE="ru-RU,ru;q=0.9").content.decode()

    assert "Перепроверить на fal сейчас (в очередь воркеру)" in page
    assert "Обучается · В очереди" in page
    assert "зависло" in page
    assert "Зависшие" in page  # the stuck filter
    assert "Выберите" in page  # Django's own admin strings follow too


def test_the_dashboard_and_index_speak_russian(admin_client):
    index = admin_client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    dashboard = admin_client.get(
        reverse("admin:monitoring_dashboard"), HTTP_ACCEPT_LANGUAGE="ru"
    ).content.decode()

    assert "Зависшие обучения" in index and "Панель мониторинга" in index
    assert "Периодическая проверка" in dashboard
    assert "НИ РАЗУ НЕ ЗАПУСКАЛАСЬ" in dashboard
    assert "Зависших нет." in dashboard


def test_an_english_browser_gets_english(admin_client, training_avatar):
    training_avatar(request_id="req-en")

    page = admin_client.get(CHANGELIST, HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9").content.decode()

    assert "Re-check now on fal (queued to the worker)" in page
    assert "Перепроверить" not in page


def _po_entries(path: Path) -> list[tuple[str, list[str]]]:
    """(msgid, msgstrs) of every live entry; enough of the .po format for this check."""
    import ast

    entries, msgid, strs, key = [], None, [], None
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if msgid:
                entries.append((msgid, strs))
            msgid, strs, key = None, [], None
        elif line.startswith("#, ") and "fuzzy" in line:
            # A fuzzy entry is makemessages' guess from a similar string: msgfmt does
            # not compile it, so staff would read English.
            strs.append("")
        elif line.startswith("#"):
            continue
        elif line.startswith("msgid "):
            msgid, key = ast.literal_eval(line[6:]), "id"
        elif line.startswith("msgid_plural "):
            key = "plural"
        elif line.startswith("msgstr"):
            strs.append(ast.literal_eval(line.split(" ", 1)[1]))
            key = "str"
        elif line.startswith('"'):
            if key == "id":
                msgid += ast.literal_eval(line)
            elif key == "str":
                strs[-1] += ast.literal_eval(line)
    return entries


def test_every_string_has_a_russian_translation():
    entries = _po_entries(ROOT / "locale/ru/LC_MESSAGES/django.po")

    untranslated = [msgid for msgid, strs in entries if not all(strs)]
    assert len(entries) > 300
    assert untranslated == []


def test_the_committed_catalog_is_compiled_from_the_committed_po(tmp_path):
    import shutil
    import subprocess

    if not shutil.which("msgfmt"):
        pytest.skip("gettext's msgfmt is not installed")
    compiled = tmp_path / "django.mo"
    subprocess.run(
        [
            "msgfmt",
            "--check-format",
            "-o",
            str(compiled),
            str(ROOT / "locale/ru/LC_MESSAGES/django.po"),
        ],
        check=True,
    )

    assert compiled.read_bytes() == (ROOT / "locale/ru/LC_MESSAGES/django.mo").read_bytes()
