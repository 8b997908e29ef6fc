"""The docs and the code say the same thing: every setting and command README.md and docs/
name exists, and every variable the code reads from the environment is in
docs/configuration.md. No database: the code is read as text and the settings as loaded."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from django.conf import settings
from django.core.management import get_commands

from tests.test_alerting import github_anchor
from tests.test_ops_files import table_variables

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = [
    *(
        path
        for app in ("avatarsite", "monitoring", "notifications")
        for path in sorted((ROOT / app).rglob("*.py"))
        if "migrations" not in path.parts
    ),
    ROOT / "gunicorn.conf.py",
]

# Variables read outside the project's Python code, by what reads them: a file of the
# project, or a library's module. Each must still mention the name.
READ_ELSEWHERE = {
    "FAL_QUEUE_RUN_HOST": "fal_client.client",
    "AWS_ACCESS_KEY_ID": "botocore.credentials",
    "AWS_SECRET_ACCESS_KEY": "botocore.credentials",
    "AWS_SESSION_TOKEN": "botocore.credentials",
    "POSTGRES_PASSWORD": "docker-compose.yml",
    "STATE_DIR": "bin/run",
}
# Upper-case names in backticks that are not settings: fal's sub-states, names in code.
NOT_SETTINGS = {
    "ALLOWED_MOVES",
    "COMPLETED",
    "HELD",
    "IN_PROGRESS",
    "IN_QUEUE",
    "NOT_SENT",
    "SUBMITTING",
}
SETTING_LIKE = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z]{3,})(?:_\*|=[^`]*)?`")
MANAGE = re.compile(r"(?:manage\.py|bin/manage)\s+([a-z][a-z0-9_]*)")


def variables_the_code_reads() -> set[str]:
    """Literal names passed to avatarsite.env's readers (``env_int("X", ...)``), to
    ``os.environ.get``/``os.getenv``, or looked up as ``os.environ["X"]``."""
    names: set[str] = set()
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            key = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                reader = (isinstance(func, ast.Name) and func.id.startswith("env_")) or (
                    isinstance(func, ast.Attribute)
                    and (
                        func.attr == "getenv"
                        or (func.attr == "get" and ast.unparse(func.value) == "os.environ")
                    )
                )
                key = node.args[0] if reader else None
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                key = node.slice if ast.unparse(node.value) == "os.environ" else None
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                names.add(key.value)
    return names


def documented_variables() -> set[str]:
    """The configuration table's variables and the list "Read elsewhere" under it."""
    text = CONFIGURATION.read_text()
    section = text[text.index("## Read elsewhere") :]
    section = section[: section.index("\n## ")]
    items = re.split(r"\n- ", section)[1:]
    listed = {
        name
        for item in items
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)(?:=[^`]*)?`", item.split(": ", 1)[0])
    }
    return set(table_variables()) | listed


def mentioned(name: str, where: str) -> bool:
    path = ROOT / where
    if not path.exists():
        spec = importlib.util.find_spec(where)
        assert spec and spec.origin, f"{where} (said to read {name}) is not installed"
        path = Path(spec.origin)
    return name in path.read_text()


def test_every_variable_the_code_reads_is_in_the_configuration_doc():
    missing = sorted(variables_the_code_reads() - documented_variables())
    assert not missing, (
        "The code reads these environment variables, but docs/configuration.md's table "
        "(or its list 'Read elsewhere') does not document them:\n  " + "\n  ".join(missing)
    )


def test_every_documented_variable_is_read_by_something():
    read = variables_the_code_reads()
    unread = sorted(
        name
        for name in documented_variables()
        if name not in read
        and not (name in READ_ELSEWHERE and mentioned(name, READ_ELSEWHERE[name]))
    )
    assert not unread, (
        "docs/configuration.md documents variables nothing reads (removed or misspelt?):\n  "
        + "\n  ".join(unread)
    )


def test_every_setting_the_docs_name_exists():
    known = variables_the_code_reads() | set(READ_ELSEWHERE) | set(dir(settings)) | NOT_SETTINGS
    table = table_variables()
    unknown = []
    for page in PAGES:
        for match in SETTING_LIKE.finditer(page.read_text()):
            name = match[1]
            if match[0].endswith("_*`"):
                exists = any(k.startswith(name + "_") for k in known)
            else:
                # A name without an underscore (DEBUG, but also INFO) is a setting only
                # when the configuration table has it as one.
                exists = name in known or ("_" not in name and name not in table)
            if not exists:
                unknown.append(f"{page.relative_to(ROOT)}: {name}")
    assert not unknown, (
        "The docs name settings that neither the code nor Django's settings know "
        "(renamed? add real non-settings to NOT_SETTINGS):\n  " + "\n  ".join(sorted(set(unknown)))
    )


def test_every_command_the_docs_name_exists():
    commands = set(get_commands())
    unknown = []
    for page in PAGES:
        text = page.read_text()
        named = set(MANAGE.findall(text))
        if "## Commands" in text:
            table = text[text.index("## Commands") :]
            named |= set(re.findall(r"^\| `([a-z][a-z0-9_]*)[ `]", table, re.MULTILINE))
        unknown += [f"{page.relative_to(ROOT)}: {name}" for name in named - commands]
    assert not unknown, "The docs name management commands that do not exist:\n  " + "\n  ".join(
        sorted(unknown)
    )


def test_the_checks_see_what_they_are_meant_to():
    """The readers above find what they must, so an empty result never passes silently."""
    read = variables_the_code_reads()
    assert {
        "SECRET_KEY",
        "DATABASE_PREPARED_STATEMENTS",
        "GUNICORN_THREADS",
        "SSL_CERT_FILE",
    } <= read
    assert {"CHECK_INTERVAL_SECONDS", "TEST_DATABASE_NAME", "STATE_DIR"} <= documented_variables()
    named = set(MANAGE.findall((ROOT / "docs" / "staff-guide.md").read_text()))
    assert {"axes_reset_username"} <= named


def anchors(page: Path) -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in page.read_text().splitlines()
        if line.startswith("#") and not line.startswith("#!")
    }


def test_every_link_to_a_doc_and_its_heading_resolves():
    """Links between the pages, and the "See docs/x.md#heading" of module docstrings."""
    links = []
    for page in PAGES:
        for target, anchor in re.findall(
            r"\]\((?!https?:)([^)#\s]*)#?([^)\s]*)\)", page.read_text()
        ):
            links.append((page, (page.parent / target) if target else page, anchor))
    for path in [*CODE, ROOT / "bin" / "manage", ROOT / "deploy" / "nginx.conf"]:
        for target, first, second in re.findall(
            r"docs/([\w-]+\.md)(?:#([\w-]+))?(?: and #([\w-]+))?", path.read_text()
        ):
            links += [(path, ROOT / "docs" / target, a) for a in (first, second)]
    broken = [
        f"{source.relative_to(ROOT)} → {target.resolve().relative_to(ROOT)}#{anchor}"
        for source, target, anchor in links
        if not target.exists()
        or (anchor and target.suffix == ".md" and anchor not in anchors(target))
    ]
    assert not broken, "Links to a page or heading that does not exist:\n  " + "\n  ".join(broken)
