"""The Content-Security-Policy on admin pages (the browser test checks nothing is blocked)."""

from __future__ import annotations

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
    assert policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["form-action"] == "'self'"


def test_paths_outside_the_admin_have_no_admin_policy(client):
    assert "Content-Security-Policy" not in client.get("/healthz")
    assert "Content-Security-Policy" not in client.get("/webhooks/fal/")
