"""Event callbacks: a client's avatar outcomes, POSTed to its URL, signed (Standard Webhooks).

One row per outcome, written in the transition's transaction; the destination is resolved
and checked to be public at every send. See docs/api.md#event-callbacks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.core.checks import Tags, Warning, register
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import ngettext
from django_q.tasks import async_task
from prometheus_client.core import GaugeMetricFamily
from standardwebhooks.webhooks import Webhook

from monitoring import files
from monitoring.api import representation
from monitoring.api.models import (
    ApiClient,
    CallbackAttempt,
    CallbackStatus,
    EventCallback,
    EventType,
)
from monitoring.models import Avatar, Training
from monitoring.ops.attention import Problem
from notifications.delivery import worker_name
from notifications.models import INTERRUPTED_TWICE, backoff

logger = logging.getLogger("monitoring")

TASK = "monitoring.api.callbacks.deliver"
Outcome = CallbackAttempt.Outcome
_OUTCOME_EVENTS = {
    "completed": EventType.COMPLETED,
    "error": EventType.FAILED,
    "cancelled": EventType.CANCELLED,
}


# --- Writing events (receivers of ``transitions``' signals, in the transition's transaction)


def record_outcome(sender: Any, *, training: Training, outcome: str, **kwargs: Any) -> None:
    event_type = _OUTCOME_EVENTS.get(outcome)
    if event_type is not None:
        _record(training, event_type, f"{event_type}:{training.pk}")


def record_stuck(sender: Any, *, training: Training, episode: int, **kwargs: Any) -> None:
    # Read again: the flag was set by an UPDATE the caller's object has not seen yet.
    training = Training.objects.select_related("avatar__owner").get(pk=training.pk)
    _record(training, EventType.STUCK, f"{EventType.STUCK}:{training.pk}:{episode}")


def record_retried(sender: Any, *, training: Training, retry: Training, **kwargs: Any) -> None:
    _record(training, EventType.RETRIED, f"{EventType.RETRIED}:{training.pk}")


def _record(training: Training, event_type: str, key: str) -> None:
    client = ApiClient.objects.filter(avatars__avatar_id=training.avatar_id).first()
    if client is None or not client.callback_url or not client.is_active:
        return
    if event_type == EventType.STUCK and not client.callback_stuck:
        return
    avatar = training.avatar  # read with the training by every sender of the signals
    if avatar.current_training_id == training.pk:
        avatar.current_training = training
    now = timezone.now()
    # No signed links in what is stored: ``signed_request`` adds them at send time.
    data = representation.avatar_data(avatar, links=False)
    try:
        # A savepoint: a duplicate key is "already written", never a broken transition.
        with transaction.atomic():
            callback = EventCallback.objects.create(
                event_key=key,
                webhook_id=f"msg_{uuid.uuid4().hex}",
                client=client,
                avatar=avatar,
                training=training,
                event_type=event_type,
                payload={"type": str(event_type), "timestamp": now.isoformat(), "data": data},
                **_due_from(now),
            )
    except IntegrityError:
        logger.info("Event %s already recorded: not written twice", key)
        return
    transaction.on_commit(lambda: enqueue(callback.pk))


def _due_from(now: datetime) -> dict[str, Any]:
    """Due and handed to a task now, retried for EVENT_CALLBACK_MAX_AGE_HOURS."""
    max_age = timedelta(hours=settings.EVENT_CALLBACK_MAX_AGE_HOURS)
    return {"next_attempt_at": now, "queued_at": now, "give_up_at": now + max_age}


def enqueue(callback_id: int) -> None:
    """Queue the delivery task; never raises (the relay picks up a lost hand-over)."""
    try:
        # The checks cluster's queue, not Telegram's.
        async_task(TASK, callback_id, group="api-callbacks", cluster=settings.Q_CLUSTER["name"])
    except Exception:
        EventCallback.objects.filter(pk=callback_id).update(queued_at=None)
        logger.exception("Could not queue event callback %s; the relay will send it", callback_id)


# --- Where we may send --------------------------------------------------------------------


@register(Tags.security)
def check_callback_networks(app_configs=None, **kwargs):
    if settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS and not settings.DEBUG:
        return [
            Warning(
                "EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS is on: event callbacks may be sent "
                "over plain http and to loopback or private addresses of this network.",
                hint="Leave it off in production; it is meant for tests and local runs.",
                id="api.W001",
            )
        ]
    return []


class CallbackRefused(Exception):
    """The URL or the address it resolves to is not allowed (final until staff fix it)."""


class CallbackUnresolvable(Exception):
    """The host does not resolve right now (retried)."""


@dataclass(frozen=True)
class Destination:
    url: str  # the URL with the checked address in place of the host
    host: str
    host_header: str
    address: str


def validate_callback_url(url: str) -> None:
    """Raise ``CallbackRefused`` unless ``url`` is an https URL we may send to (http only
    with ``EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS``). A host name is checked at every send."""
    allow_private = settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS
    parts = urlsplit(url)
    if parts.scheme not in (("https", "http") if allow_private else ("https",)):
        raise CallbackRefused(
            "callback URLs must use https"
            + ("" if allow_private else " (http only with EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS)")
        )
    if not parts.hostname:
        raise CallbackRefused("callback URL has no host")
    if parts.username or parts.password:
        raise CallbackRefused("callback URL must not carry credentials")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise CallbackRefused(f"callback URL has a bad port: {exc}") from None
    with suppress(ValueError):  # not an address: a host name, checked at every send
        check_address(ipaddress.ip_address(parts.hostname))


# IPv6 addresses that carry an IPv4 address, and where (RFC 4291, 2765, 6052, 3056, 4380).
# A NAT64 or 6to4 router turns them into a connection to that IPv4 address, so the rule
# judges the IPv4 address inside as well. These four (mapped, translated, compatible,
# NAT64) are only an IPv4 address written as IPv6: the IPv4 address alone is judged.
_IPV4_NOTATIONS = tuple(
    ipaddress.IPv6Network(net)
    for net in ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96", "64:ff9b::/96")
)
# Local-use NAT64 (RFC 8215): where the IPv4 address sits depends on the prefix length
# the operator chose, so the whole block is refused rather than guessed at.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _reached(address: ipaddress.IPv6Address) -> list[Address]:
    """What a connection to ``address`` reaches: it and the IPv4 addresses it carries."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in network for network in _IPV4_NOTATIONS):
        return [low32]
    if address in _SIX_TO_FOUR:
        return [address, ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)]
    if address in _TEREDO:
        return [address, *(address.teredo or (low32, low32))]
    return [address]


def check_address(address: Address) -> None:
    """Raise ``CallbackRefused`` unless what ``address`` reaches is public (globally
    routable, not multicast): the one rule, for a URL's literal and for DNS answers."""
    if settings.EVENT_CALLBACK_ALLOW_PRIVATE_NETWORKS:
        return
    judged: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            raise CallbackRefused(f"{address} is not a public address (local-use NAT64)")
        judged = _reached(address)
    for candidate in judged:
        if not candidate.is_global or candidate.is_multicast:
            inside = f" (it leads to {candidate})" if candidate != address else ""
            raise CallbackRefused(f"{address} is not a public address{inside}")


def resolve(url: str) -> Destination:
    """Check ``url`` and the addresses its host resolves to; pin the first one."""
    validate_callback_url(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CallbackUnresolvable(f"{host} does not resolve: {exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    # Every address must be allowed, not just one: the client library could pick any.
    for address in addresses:
        check_address(address)
    if not addresses:
        raise CallbackUnresolvable(f"{host} resolves to nothing")
    chosen = addresses[0]
    netloc = f"[{chosen}]:{port}" if chosen.version == 6 else f"{chosen}:{port}"
    return Destination(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        host=host,
        host_header=parts.netloc.rsplit("@", 1)[-1],
        address=str(chosen),
    )


# --- Sending ----------------------------------------------------------------------------


def signed_request(callback: EventCallback, now: datetime) -> tuple[bytes, dict[str, str]]:
    """The body and Standard Webhooks headers of one attempt (same id, fresh timestamp)."""
    payload = with_file_links(callback.payload, callback.avatar_id)
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    signature = Webhook(callback.client.callback_secret).sign(callback.webhook_id, now, body)
    return body.encode(), {
        "content-type": "application/json",
        "user-agent": "avatar-training-monitor/1",
        "webhook-id": callback.webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


def with_file_links(payload: dict[str, Any], avatar_id: int) -> dict[str, Any]:
    """The stored body with ``files`` as they are now, their links signed now (what is
    stored holds no signature: a link is a secret, and it expires)."""
    data = payload["data"]
    if "files" not in data:  # stored before files were kept
        return payload
    current_id = Avatar.objects.values_list("current_training_id", flat=True).get(pk=avatar_id)
    fresh = {
        training.pk: files.files_data(training, list(training.kept_files.all()))
        for training in Training.objects.filter(avatar_id=avatar_id).prefetch_related("kept_files")
    }
    trainings = [{**entry, "files": fresh.get(int(entry["id"]))} for entry in data["trainings"]]
    current = fresh.get(current_id) if current_id else None
    return {**payload, "data": {**data, "files": current, "trainings": trainings}}


def deliver(callback_id: int) -> str:
    """One attempt at sending a due event nobody else is sending; its outcome is the task result."""
    callback = EventCallback.objects.select_related("client").claim(
        callback_id, worker=worker_name(), lease_seconds=settings.EVENT_CALLBACK_TIMEOUT_SECONDS * 3
    )
    if callback is not None and callback.interrupted:
        if callback.status == CallbackStatus.GIVEN_UP:
            logger.error("Event callback %s: %s", callback.webhook_id, INTERRUPTED_TWICE)
            return "not due"
        logger.warning(
            "Event callback %s: a worker died mid-send; sending it once more (may be a duplicate)",
            callback.webhook_id,
        )
    if callback is None:
        return "not due"
    now = timezone.now()
    if now >= callback.give_up_at:
        callback.close(
            CallbackStatus.GIVEN_UP, last_error="older than EVENT_CALLBACK_MAX_AGE_HOURS"
        )
        return CallbackStatus.GIVEN_UP
    url = callback.client.callback_url
    try:
        if not url:
            raise CallbackRefused("the client has no callback URL")
        if not callback.client.is_active:
            raise CallbackRefused("the client is revoked")
        destination = resolve(url)
    except (CallbackRefused, CallbackUnresolvable) as exc:
        outcome = Outcome.REFUSED if isinstance(exc, CallbackRefused) else Outcome.RETRY
        return _finish(callback, callback.open_attempt(url=url[:1024]), outcome, error=str(exc))
    body, headers = signed_request(callback, now)
    headers["host"] = destination.host_header
    # Recorded before the request leaves: a worker that dies now leaves a trace.
    attempt = callback.open_attempt(url=url[:1024], address=destination.address)
    started = time.monotonic()
    try:
        with httpx.Client(
            timeout=settings.EVENT_CALLBACK_TIMEOUT_SECONDS, follow_redirects=False
        ) as http:
            response = http.post(
                destination.url,
                content=body,
                headers=headers,
                extensions={"sni_hostname": destination.host},
            )
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        return _finish(callback, attempt, Outcome.RETRY, error=error, started=started)
    code = response.status_code
    if 200 <= code < 300:
        return _finish(callback, attempt, Outcome.DELIVERED, started=started, response=response)
    error = f"HTTP {code}: {response.text[:300]}"
    if 300 <= code < 400:
        error = f"HTTP {code}: redirects are not followed ({response.headers.get('location', '')})"
    outcome = Outcome.RETRY if code == 429 or code >= 500 else Outcome.REJECTED
    return _finish(callback, attempt, outcome, error=error, started=started, response=response)


# What each outcome does to the event: its final status, or None to retry.
_FINAL: dict[str, str] = {
    Outcome.DELIVERED: CallbackStatus.DELIVERED,
    Outcome.REFUSED: CallbackStatus.REFUSED,
    Outcome.REJECTED: CallbackStatus.FAILED,
}


def _finish(
    callback: EventCallback,
    attempt: CallbackAttempt,
    outcome: str,
    *,
    error: str = "",
    started: float | None = None,
    response: httpx.Response | None = None,
) -> str:
    """Record the attempt and settle the event in one commit (``OutboxRow.settle``); a
    retry waits the backoff, or the answer's longer ``Retry-After``."""
    answer: dict[str, Any] = {"status_code": response.status_code if response is not None else None}
    answer_headers = response.headers if response is not None else {}
    if started is not None:
        answer["duration_ms"] = (time.monotonic() - started) * 1000
    now = timezone.now()
    callback.attempts += 1
    final = _FINAL.get(outcome)
    if final is None:
        base = settings.EVENT_CALLBACK_RETRY_BASE_SECONDS
        retry_in = backoff(callback.attempts, base, settings.EVENT_CALLBACK_RETRY_MAX_SECONDS)
        with suppress(KeyError, ValueError):  # a longer Retry-After wins
            retry_in = max(retry_in, float(answer_headers["retry-after"]))
        if now + timedelta(seconds=retry_in) < callback.give_up_at:
            callback.settle(
                attempt, outcome, error=error, attempt_fields=answer, retry_in=retry_in, failed=True
            )
            return "retry"
        final = CallbackStatus.GIVEN_UP
    fields: dict[str, Any] = {"attempts": callback.attempts, "last_error": error}
    if final == CallbackStatus.DELIVERED:
        fields["delivered_at"] = now
    callback.settle(attempt, outcome, error=error, attempt_fields=answer, close=final, **fields)
    if final != CallbackStatus.DELIVERED:
        logger.warning("Event callback %s %s: %s", callback.webhook_id, final, error)
    return final


def relay_once(limit: int = 50) -> int:
    """Queue the due events that have no task (the outbox's relay, and the minute's sweep)."""
    now = timezone.now()
    EventCallback.objects.forget_lost_tasks(now, settings.Q_CLUSTER["name"])
    return EventCallback.objects.queue_due(limit, now, enqueue)


def sweep() -> int:
    """The periodic net under the relay: how many events were queued."""
    return relay_once(limit=500)


def resend(callback_id: int) -> bool:
    """Staff: send an event again (same webhook-id), whatever became of it, now."""
    changed = EventCallback.objects.filter(pk=callback_id).update(
        status=CallbackStatus.PENDING, lease_until=None, claimed_by="", **_due_from(timezone.now())
    )
    if changed:
        transaction.on_commit(lambda: enqueue(callback_id))
    return bool(changed)


# --- Event callbacks the bot is not getting (being retried, or ended undelivered in the
# last 24 hours): one definition for /metrics and the banner. docs/operations.md.

ENDED_WINDOW = timedelta(hours=24)
ENDED_UNDELIVERED = (CallbackStatus.FAILED, CallbackStatus.REFUSED, CallbackStatus.GIVEN_UP)


def failing(now: datetime) -> Q:
    return Q(status=CallbackStatus.PENDING, attempts__gt=0) | Q(
        status__in=ENDED_UNDELIVERED, created_at__gte=now - ENDED_WINDOW
    )


def failing_count(now: datetime) -> int:
    return EventCallback.objects.filter(failing(now)).count()


def problems(now: datetime) -> list[Problem]:
    """The banner's line, from EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD failing callbacks."""
    count = failing_count(now)
    if count < settings.EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD:
        return []
    return [
        Problem(
            "callbacks_failing",
            ngettext(
                "%(n)s event callback to the bot is failing: is its receiver up?",
                "%(n)s event callbacks to the bot are failing: is its receiver up?",
                count,
            )
            % {"n": count},
            reverse("admin:api_eventcallback_changelist") + "?failing=yes",
        )
    ]


def figures(now: datetime) -> Iterator[GaugeMetricFamily]:
    """/metrics: the count, and the banner's threshold beside it."""
    yield GaugeMetricFamily(
        "avatar_monitor_event_callbacks_failing",
        "Event callbacks to API clients being retried, or ended undelivered in the last 24 hours.",
        value=failing_count(now),
    )
    yield GaugeMetricFamily(
        "avatar_monitor_event_callbacks_failing_threshold",
        "The admin's banner shows failing event callbacks from this many "
        "(EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD).",
        value=settings.EVENT_CALLBACKS_FAILING_ALERT_THRESHOLD,
    )
