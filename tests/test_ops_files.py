"""The operator's files: docker-compose.yml, the Procfile and .env.example.

No Docker engine runs here, so the compose file is validated against the Compose
Specification's JSON schema, vendored as ``tests/data/compose-spec.json``: the
``compose/config/compose_spec.json`` shipped in docker-compose 1.29.2's package on
PyPI (Apache-2.0; the compose-spec project's schema as of that release).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
APP_SERVICES = ("migrate", "web", "worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def schema_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def entrypoint_roles() -> set[str]:
    script = (ROOT / "bin" / "docker-entrypoint").read_text()
    return set(re.findall(r"^\s{2}([a-z]+)\)$", script, flags=re.MULTILINE))


def test_the_compose_file_validates_against_the_compose_specification(compose):
    assert schema_errors(compose) == []


def test_the_schema_does_catch_a_broken_compose_file(compose):
    # A check that would pass anything proves nothing.
    broken = copy.deepcopy(compose)
    broken["services"]["web"]["depends_on"]["migrate"]["condition"] = "when_ready"
    broken["services"]["worker"]["healthcheck"]["retries"] = "three"
    broken["services"]["db"]["restart_policy"] = "always"
    errors = schema_errors(broken)
    assert len(errors) >= 3, errors


def test_compose_wires_the_database_migration_web_and_worker_in_order(compose):
    services = compose["services"]
    assert set(services) == {"db", "redis", "certs", "proxy", *APP_SERVICES}
    assert services["redis"]["profiles"] == ["redis"]
    assert "profiles" not in services["db"]
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    for name in ("web", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
    assert services["migrate"]["restart"] == "no"
    for name in APP_SERVICES:
        service = services[name]
        # One .env file, one image, a role the entry point knows.
        assert service["env_file"] == ".env"
        assert service["build"] == "."
        (role,) = service["command"]
        assert role == name and role in entrypoint_roles()
        assert "${POSTGRES_PASSWORD" in service["environment"]["DATABASE_URL"]
        assert "@db:5432/" in service["environment"]["DATABASE_URL"]


def test_every_long_running_service_has_a_health_check(compose):
    services = compose["services"]
    for name in ("db", "redis", "web", "worker", "proxy"):
        assert services[name]["healthcheck"]["test"], name
    assert services["web"]["healthcheck"]["test"] == ["CMD", "python", "bin/container-healthcheck"]
    # docker exec does not inherit what the entry point exported: the worker's role
    # must be in the container's own environment for the check to probe the heartbeat.
    assert services["worker"]["environment"]["ROLE"] == "worker"
    assert 'role == "worker"' in (ROOT / "bin" / "container-healthcheck").read_text()


def _published(service: dict) -> list[dict]:
    """The service's published ports in the long form (host_ip, published, target)."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append(port)
            continue
        parts = str(port).split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        found.append({"host_ip": host_ip, "published": parts[-2], "target": parts[-1]})
    return found


def test_web_is_not_published_on_any_interface_only_the_tls_proxy_is(compose):
    services = compose["services"]
    # Published on all interfaces is what a bare "8000:8000" means: web must not be.
    assert _published(services["web"]) == []
    assert "network_mode" not in services["web"]
    assert {p["target"] for p in _published(services["proxy"])} == {"443", "80"}
    for name, service in services.items():
        if name != "proxy":
            assert _published(service) == [], name


def test_the_proxy_is_the_one_address_web_trusts_for_forwarded_headers(compose):
    services = compose["services"]
    proxy_ip = services["proxy"]["networks"]["default"]["ipv4_address"]
    web_env = services["web"]["environment"]
    assert web_env["FORWARDED_ALLOW_IPS"] == proxy_ip
    assert web_env["SECURE_PROXY_SSL_HEADER"] == "X-Forwarded-Proto"
    [subnet] = compose["networks"]["default"]["ipam"]["config"]
    import ipaddress

    assert ipaddress.ip_address(proxy_ip) in ipaddress.ip_network(subnet["subnet"])
    # The proxy's config speaks to web on the port web listens on, with the certificate
    # where the compose file mounts it.
    config = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    assert f"server web:{web_env['PORT']};" in config
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["proxy"]["volumes"]}
    assert mounts["/etc/nginx/certs"] == "./deploy/certs"
    assert "ssl_certificate     /etc/nginx/certs/tls.crt;" in config
    assert "include /etc/nginx/snippets/nginx-proxy.conf;" in config
    assert mounts["/etc/nginx/snippets/nginx-proxy.conf"] == "./deploy/nginx-proxy.conf"


def test_the_local_certificate_is_written_once_and_a_real_one_is_kept(tmp_path):
    import runpy

    from cryptography import x509

    script = runpy.run_path(str(ROOT / "deploy" / "local-certificate.py"))
    assert script["write_pair"](tmp_path, ["monitor.local"]) is True
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "monitor.local" in names.get_values_for_type(x509.DNSName)
    (tmp_path / "tls.crt").write_text("a real certificate")
    assert script["write_pair"](tmp_path, []) is False
    assert (tmp_path / "tls.crt").read_text() == "a real certificate"


def test_the_procfile_runs_web_worker_and_release_through_the_entry_point():
    lines = (ROOT / "Procfile").read_text().splitlines()
    processes = dict(line.split(":", 1) for line in lines if line.strip())
    processes = {name.strip(): command.strip() for name, command in processes.items()}
    assert set(processes) == {"web", "worker", "release"}
    assert processes["web"] == "bin/docker-entrypoint web"
    assert processes["worker"] == "bin/docker-entrypoint worker"
    assert processes["release"] == "python manage.py migrate --noinput"
    assert os.access(ROOT / "bin" / "docker-entrypoint", os.X_OK)
    assert {"web", "worker"} <= entrypoint_roles()


# --- .env.example matches the configuration table (docs/configuration.md) ------------------


def table_variables() -> dict[str, str | None]:
    """Every variable of docs/configuration.md's table → its default as a literal value
    (None when the table says it in words, e.g. "on unless `DEBUG`")."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text[: text.index("\n## ")]
    found: dict[str, str | None] = {}
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        literals = re.findall(r"`([^`]*)`", cells[1])
        words = re.sub(r"`[^`]*`", "", cells[1]).strip()
        literal_only = re.fullmatch(r"[\s/,]*|—|empty|unset", words) is not None
        for index, name in enumerate(names):
            if not literal_only:
                found[name] = None
            elif not literals:
                found[name] = ""
            elif len(literals) == len(names):
                found[name] = literals[index]
            elif len(literals) == 1:
                found[name] = literals[0]
            else:
                found[name] = None
    return found


def env_example_variables() -> dict[str, str]:
    found = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            assert match[1] not in found, f"{match[1]} is listed twice in .env.example"
            found[match[1]] = match[2]
    return found


def test_env_example_lists_every_variable_of_the_configuration_table_with_its_default():
    table, example = table_variables(), env_example_variables()
    missing = sorted(set(table) - set(example))
    extra = sorted(set(example) - set(table))
    assert not missing and not extra, (
        "docs/configuration.md's table and .env.example differ.\n"
        f"  In the table, missing from .env.example: {', '.join(missing) or '-'}\n"
        f"  In .env.example, not in the table: {', '.join(extra) or '-'}"
    )
    wrong = [
        f"{name}: the table says {default!r}, .env.example has {example[name]!r}"
        for name, default in table.items()
        if default is not None and example[name] != default
    ]
    assert not wrong, "Defaults differ:\n  " + "\n  ".join(wrong)
    assert list(example) == list(table), ".env.example lists the variables in another order"


def test_env_example_leaves_uncommented_only_what_compose_needs_filled_in():
    required = [
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", line)
    ]
    assert sorted(required) == ["ALLOWED_HOSTS", "FAL_KEY", "POSTGRES_PASSWORD", "SECRET_KEY"]
