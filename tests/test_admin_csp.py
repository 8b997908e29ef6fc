"""The Content-Security-Policy on admin pages (the browser tests check nothing is blocked,
tests/browser.py): no inline script or style, so none may be written anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db


def _policy(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";") if part.strip())


@pytest.mark.parametrize(
    "path",
    [
        "/admin/login/",
        "/admin/",
        "/admin/monitoring/avatar/",
        "/admin/monitoring/avatar/dashboard/",
    ],
)
def test_admin_pages_forbid_inline_and_foreign_scripts(client, admin_user, path):
    if path != "/admin/login/":
        client.force_login(admin_user)

    response = client.get(path)

    assert response.status_code == 200
    policy = _policy(response)
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["form-action"] == "'self'"


def test_paths_outside_the_admin_have_no_admin_policy(client):
    assert "Content-Security-Policy" not in client.get("/healthz")
    assert "Content-Security-Policy" not in client.get("/webhooks/fal/")


ROOT = Path(__file__).resolve().parent.parent
# A style attribute, a <style> element, or a <script> without src (an inline script).
INLINE = re.compile(r"\bstyle=|<style\b|<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)


def test_no_template_or_python_file_writes_an_inline_style_or_script():
    files = [
        path
        for folder in ("avatarsite", "monitoring", "notifications", "templates")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".html", ".svg", ".txt") and "migrations" not in path.parts
    ]
    assert len(files) > 50
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if INLINE.search(line)
    ]
    assert found == []
