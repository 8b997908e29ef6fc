"""fal's own record of every request, through its Platform API (``shared/fal-facts.md``).

The queue forgets a result an hour after the job ends; the record does not. This
module answers two questions and nothing else:

- ``find_request``: what does the record say about request R of endpoint E?
- ``list_requests``: which requests did endpoint E have between T1 and T2?

Every call is bounded by FAL_PLATFORM_TIMEOUT_SECONDS and a listing follows at most
FAL_PLATFORM_MAX_PAGES pages. Whatever goes wrong (429, 5xx, a timeout, even a 404 or
401 from the Platform API itself) raises ``PlatformUnavailable``, "try later": an
answer we could not get is never a verdict on a training. It uses the queue's key
(``Authorization: Key ...``) and httpx, which trusts SSL_CERT_FILE like fal-client, so
the emulator works unpatched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from avatarsite.log_redaction import redact, redact_value
from monitoring.fal import payloads

PAGE_SIZE = 100  # fal's maximum
BY_ENDPOINT = "/models/requests/by-endpoint"


class PlatformUnavailable(Exception):
    """fal's record could not be read now (rate limit, outage, timeout): try later."""

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        detail = redact(detail)  # fal's text may echo our key
        self.detail = detail
        self.status_code = status_code
        super().__init__(f"fal's record: {status_code} {detail}" if status_code else detail)


@dataclass(frozen=True)
class RecordItem:
    """One finished request as fal's record lists it."""

    request_id: str
    endpoint_id: str
    status_code: int | None
    sent_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = None
    # None when the record has no payload (not expanded, or not stored by fal).
    json_input: dict | None = field(default=None, repr=False)
    json_output: Any = field(default=None, repr=False)
    has_output: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def error_message(self) -> str:
        """fal's reason for a failed request, from its output when the record kept it."""
        reason = ""
        if self.has_output:
            reason = payloads.detail_messages(self.json_output) or payloads.error_detail(
                self.json_output, ""
            )
        code = f"HTTP {self.status_code}" if self.status_code else "an error"
        return redact(reason) or f"fal's record: the request ended with {code}"

    def matches(self, arguments: dict) -> bool:
        """Whether this request was sent with our input (images URL and trigger)."""
        return (
            self.json_input is not None
            and payloads.images_url_of(self.json_input) == payloads.images_url_of(arguments)
            and payloads.trigger_of(self.json_input) == payloads.trigger_of(arguments)
        )

    def summary(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "endpoint_id": self.endpoint_id,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "status_code": self.status_code,
        }


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = parse_datetime(value)
    except ValueError:
        return None
    if moment is not None and timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return moment


def _item(raw: Any) -> RecordItem | None:
    if not isinstance(raw, dict) or not raw.get("request_id"):
        return None
    # What fal's record holds is fal's text: redacted before anything keeps or shows it.
    raw = redact_value(raw)
    code = raw.get("status_code")
    json_input = raw.get("json_input")
    return RecordItem(
        request_id=str(raw["request_id"]),
        endpoint_id=str(raw.get("endpoint_id") or ""),
        status_code=code if isinstance(code, int) else None,
        sent_at=_when(raw.get("sent_at")),
        started_at=_when(raw.get("started_at")),
        ended_at=_when(raw.get("ended_at")),
        duration=raw.get("duration") if isinstance(raw.get("duration"), (int, float)) else None,
        json_input=json_input if isinstance(json_input, dict) else None,
        json_output=raw.get("json_output"),
        has_output=raw.get("json_output") is not None,
    )


class PlatformClient:
    """One httpx client for a series of calls (a listing's pages, a reconcile run)."""

    def __init__(self, *, timeout: float | None = None) -> None:
        import httpx

        if not settings.FAL_KEY:
            raise PlatformUnavailable("FAL_KEY is not configured")
        self.timeout = settings.FAL_PLATFORM_TIMEOUT_SECONDS if timeout is None else timeout
        self.calls = 0
        self._http = httpx.Client(
            base_url=settings.FAL_PLATFORM_API_URL.rstrip("/"),
            headers={"Authorization": f"Key {settings.FAL_KEY}"},
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
        )

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _page(self, params: dict[str, Any]) -> dict:
        import httpx

        self.calls += 1
        try:
            response = self._http.get(BY_ENDPOINT, params=params)
        except httpx.HTTPError as exc:
            raise PlatformUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
        if not 200 <= response.status_code < 300:
            try:
                body = response.json()
            except ValueError:
                body = None
            detail = payloads.error_detail(body, response.reason_phrase)[:300]
            raise PlatformUnavailable(detail, status_code=response.status_code)
        try:
            body = response.json()
        except ValueError as exc:
            raise PlatformUnavailable("unreadable answer (not JSON)") from exc
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise PlatformUnavailable("unreadable answer (no items)")
        return body

    def find_request(self, endpoint: str, request_id: str) -> RecordItem | None:
        """The record of one request with its payloads, or None when fal has none (90 days)."""
        body = self._page(
            {"endpoint_id": endpoint, "request_id": request_id, "expand": "payloads", "limit": 1}
        )
        for raw in body["items"]:
            item = _item(raw)
            if item is not None and item.request_id == request_id:
                return item
        return None

    def list_requests(
        self,
        endpoint: str,
        *,
        start: datetime,
        end: datetime,
        with_payloads: bool = False,
        max_pages: int | None = None,
    ) -> Iterator[RecordItem]:
        """Every finished request of ``endpoint`` that ended in [start, end), page by page.

        Raises ``PlatformUnavailable`` when a page fails, and when there are more pages
        than the cap: a partial list must not be taken for the whole one.
        """
        params: dict[str, Any] = {
            "endpoint_id": endpoint,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "limit": PAGE_SIZE,
        }
        if with_payloads:
            params["expand"] = "payloads"
        pages = max_pages or settings.FAL_PLATFORM_MAX_PAGES
        for _page in range(pages):
            body = self._page(params)
            for raw in body["items"]:
                item = _item(raw)
                if item is not None:
                    yield item
            cursor = body.get("next_cursor")
            if not body.get("has_more") or not cursor:
                return
            params["cursor"] = cursor
        raise PlatformUnavailable(f"more than {pages} pages of {PAGE_SIZE}: listing cut short")

    def find_matching(
        self, endpoint: str, arguments: dict, *, since: datetime, until: datetime | None = None
    ) -> tuple[list[RecordItem], int]:
        """Requests of ``endpoint`` since ``since`` sent with our input, earliest first,
        and how many items could not be compared (the record kept no input)."""
        until = until or timezone.now() + timedelta(minutes=1)
        matches: list[RecordItem] = []
        unverifiable = 0
        for item in self.list_requests(endpoint, start=since, end=until, with_payloads=True):
            if item.json_input is None:
                unverifiable += 1
            elif item.matches(arguments):
                matches.append(item)
        epoch = datetime.min.replace(tzinfo=UTC)
        matches.sort(key=lambda m: (m.sent_at or m.ended_at or epoch, m.request_id))
        return matches, unverifiable


def find_request(endpoint: str, request_id: str) -> RecordItem | None:
    with PlatformClient() as client:
        return client.find_request(endpoint, request_id)


def find_matching(
    endpoint: str, arguments: dict, *, since: datetime
) -> tuple[list[RecordItem], int]:
    with PlatformClient() as client:
        return client.find_matching(endpoint, arguments, since=since)
