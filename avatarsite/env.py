"""Reading the environment: a value that cannot be understood raises ``ImproperlyConfigured``
naming the variable, so a typo in a deployment stops the process at start-up."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from dj_database_url import DBConfig

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
HTTP = ("https", "http")


def _raw(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: None = None) -> str | None: ...
def env_str(name: str, default: str | None = None) -> str | None:
    return _raw(name) or default


def env_bool(name: str, default: bool) -> bool:
    if (value := _raw(name)) is None:
        return default
    if value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ImproperlyConfigured(
        f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {value!r}"
    )


def _number(name: str, default, kind: type, what: str, minimum, maximum=None) -> Any:
    if (value := _raw(name)) is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {what}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {number}")
    return number


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    return _number(name, default, int, "a whole number", minimum, maximum)


def env_int_or_off(name: str, default: int, *, minimum: int | None = None) -> int | None:
    """None when the variable is set but empty (turns a feature off)."""
    if name in os.environ and not os.environ[name].strip():
        return None
    return env_int(name, default, minimum=minimum)


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    return _number(name, default, float, "a number", minimum)


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    return list(default) if value is None else [i.strip() for i in value.split(",") if i.strip()]


def env_networks(
    name: str, default: list[str]
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for item in env_list(name, default):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must list IP addresses or networks (e.g. 10.0.0.0/8), got {item!r}"
            ) from None
    return networks


@overload
def env_url(name: str, default: str, *, schemes: tuple[str, ...] = HTTP) -> str: ...
@overload
def env_url(name: str, default: None, *, schemes: tuple[str, ...] = HTTP) -> str | None: ...
def env_url(name: str, default: str | None, *, schemes: tuple[str, ...] = HTTP) -> str | None:
    """Trailing slash removed."""
    if (value := _raw(name)) is None:
        return default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(f"{name} must be an absolute {allowed} URL, got {value!r}")
    return value.rstrip("/")


def env_database(name: str, default_sqlite_path: Path) -> DBConfig:
    import dj_database_url

    value = _raw(name) or f"sqlite:///{default_sqlite_path}"
    scheme = urlsplit(value).scheme
    if scheme not in {"sqlite", "postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(
            f"{name} must start with sqlite:// or postgres://, got scheme {scheme!r}"
        )
    try:
        config = dj_database_url.parse(value)
    except Exception as exc:  # dj-database-url raises several types for bad URLs
        raise ImproperlyConfigured(f"{name} is not a valid database URL: {exc}") from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        if not config.get("NAME") or config["NAME"] == ":memory:":
            raise ImproperlyConfigured(
                f"{name} must name a SQLite file (sqlite:////absolute/path.sqlite3)"
            )
        # WAL lets the web server read while the worker writes; the busy timeout and
        # IMMEDIATE transactions make writers queue instead of failing with
        # "database is locked".
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    else:
        config["CONN_MAX_AGE"] = 60
        config["CONN_HEALTH_CHECKS"] = True
        if env_bool("DATABASE_PREPARED_STATEMENTS", True):
            # The webhook's fixed handful of statements cost about a third less CPU on
            # both sides (bench/webhooks.py).
            options = config.setdefault("OPTIONS", {})
            options.setdefault("server_side_binding", True)
            options.setdefault("prepare_threshold", 5)
    return config


def env_proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """``X-Forwarded-Proto`` or ``X-Forwarded-Proto=https`` → Django's tuple form."""
    if (value := _raw(name)) is None:
        return None
    header, _, expected = value.partition("=")
    header = header.strip()
    if not header or not all(c.isalnum() or c == "-" for c in header):
        raise ImproperlyConfigured(
            f"{name} must be a header name such as X-Forwarded-Proto "
            f"(optionally =https), got {value!r}"
        )
    return ("HTTP_" + header.upper().replace("-", "_"), expected.strip() or "https")
