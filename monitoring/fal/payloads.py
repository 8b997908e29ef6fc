"""What fal hands us and what we hand fal (trainer inputs, result URLs, error details):
every path reads fal's payloads through these functions, so a rule changes in one place."""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings

from monitoring.models import TrainingType

# Training types and their trainers (portrait: trigger_phrase; style: trigger_word, is_style).
ENDPOINTS: dict[str, str] = {
    TrainingType.PORTRAIT: "fal-ai/flux-lora-portrait-trainer",
    TrainingType.STYLE: "fal-ai/flux-lora-fast-training",
}
DEFAULT_ENDPOINT = ENDPOINTS[TrainingType.PORTRAIT]
MAX_URL_LENGTH = 2048


def training_type_of(endpoint: str) -> str:
    """The training type an endpoint trains (portrait for anything we do not know)."""
    return next((t for t, known in ENDPOINTS.items() if known == endpoint), TrainingType.PORTRAIT)


def training_input(
    training_type: str, *, images_url: str, trigger_word: str, extra: dict | None = None
) -> tuple[str, dict]:
    """(endpoint, arguments) for a training type, with the trainer's own input names."""
    if training_type not in ENDPOINTS:
        raise ValueError(f"unknown training type {training_type!r}")
    arguments: dict[str, Any] = {"images_data_url": images_url}
    if training_type == TrainingType.STYLE:
        arguments.update({"trigger_word": trigger_word, "is_style": True})
    else:
        arguments["trigger_phrase"] = trigger_word
    # Staff-chosen extras (steps, learning_rate...) never override the fields above.
    return ENDPOINTS[training_type], {**(extra or {}), **arguments}


def trigger_of(arguments: Any) -> str:
    """The trigger of a trainer input, whichever trainer's name it goes by."""
    if not isinstance(arguments, dict):
        return ""
    return str(arguments.get("trigger_phrase") or arguments.get("trigger_word") or "")


def images_url_of(arguments: Any) -> str:
    return str(arguments.get("images_data_url") or "") if isinstance(arguments, dict) else ""


def lora_urls(output: Any) -> tuple[str, str] | None:
    """(LoRA URL, config URL) of a trainer's output, or None when it has no LoRA file; the
    config URL is "" when absent or unusable (a LoRA without it still generates images)."""
    if not isinstance(output, dict):
        return None
    lora = output.get("diffusers_lora_file")
    url = lora.get("url") if isinstance(lora, dict) else None
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        return None
    config = output.get("config_file")
    config_url = config.get("url") if isinstance(config, dict) else ""
    if not isinstance(config_url, str) or len(config_url) > MAX_URL_LENGTH:
        config_url = ""
    return url, config_url


class MediaUrl(StrEnum):
    """What ``check_media_url`` says of a URL fal handed us to show or send on."""

    ALLOWED = "allowed"
    NOT_HTTPS = "not_https"  # javascript:, data:, http:, garbage: never shown to anyone
    FOREIGN_HOST = "foreign_host"  # https, but not where fal keeps its files


def _allowed(host: str, path: str, rule: str) -> bool:
    rule = rule.strip().lower()
    rule_host, slash, prefix = rule.partition("/")
    host_ok = host.endswith(rule_host[1:]) if rule_host.startswith("*.") else host == rule_host
    return host_ok and (not slash or path.startswith("/" + prefix))


def normalised_path(path: str) -> str | None:
    """``path`` as a server resolves it: percent-decoded until stable (``%252e%252e`` is
    ``..``), ``\\`` as ``/``, dot segments gone; None when not UTF-8 once decoded."""
    for _ in range(4):
        try:
            decoded = unquote(path, errors="strict")
        except UnicodeDecodeError:
            return None
        if decoded == path:
            break
        path = decoded
    else:
        return None
    segments: list[str] = []
    names = path.replace("\\", "/").split("/")[1:]
    for index, name in enumerate(names):
        if name == "..":
            if segments:
                segments.pop()
        elif name != ".":
            segments.append(name)
            continue
        if index == len(names) - 1:
            segments.append("")  # "/a/b/.." is the folder "/a/"
    return "/" + "/".join(segments)


def check_media_url(url: str) -> MediaUrl:
    """The one rule for a result URL from fal, on every path: https, on a host of
    FAL_MEDIA_ALLOWED_HOSTS (exact, ``*.`` subdomains, or a path prefix matched against
    the normalised path, so ``/falserverless/../evil-bucket/`` is the foreign bucket)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        return MediaUrl.NOT_HTTPS
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        return MediaUrl.NOT_HTTPS
    if parts.scheme.lower() != "https" or not host or parts.username or parts.password:
        return MediaUrl.NOT_HTTPS
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        return MediaUrl.NOT_HTTPS
    path = normalised_path(parts.path)
    if path is None:
        return MediaUrl.FOREIGN_HOST
    if any(_allowed(host, path, rule) for rule in settings.FAL_MEDIA_ALLOWED_HOSTS):
        return MediaUrl.ALLOWED
    return MediaUrl.FOREIGN_HOST


def unsafe_result_url(lora_url: str, config_url: str = "") -> tuple[MediaUrl, str] | None:
    """The worst of a result's URLs and the URL itself, or None when both are allowed (a
    config URL may be empty, but one given must pass: the owner's bot hands it on)."""
    urls = [lora_url, config_url] if config_url else [lora_url]
    bad = [(v, url) for url in urls if (v := check_media_url(url)) != MediaUrl.ALLOWED]
    # Not https is the worse verdict; among equals, the LoRA's URL.
    return min(bad, key=lambda b: b[0] != MediaUrl.NOT_HTTPS) if bad else None


def error_detail(body: Any, fallback: str) -> str:
    """fal's error answer as one line: its ``detail`` (a text or a validation list)."""
    if isinstance(body, dict):
        detail = body.get("detail", body.get("status", fallback))
        if isinstance(detail, list):
            return "; ".join(
                str(item.get("msg", item)) if isinstance(item, dict) else str(item)
                for item in detail
            )
        return str(detail)
    return fallback


def detail_messages(payload: Any) -> str:
    """The ``msg`` texts of a validation error payload (``{"detail": [{"msg": ...}]}``)."""
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, str):
        return detail[:500]
    if not isinstance(detail, list):
        return ""
    messages = [
        str(item.get("msg")) for item in detail if isinstance(item, dict) and item.get("msg")
    ]
    return "; ".join(messages)[:500]
