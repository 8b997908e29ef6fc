"""fal's Platform API: its record of every request, billing, balance, prices. Whatever goes
wrong raises ``PlatformUnavailable``, "try later", never a verdict on a training.
See docs/architecture.md#fals-own-record-recovery-lost-submits-adoption.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from avatarsite.log_redaction import redact, redact_value
from monitoring.fal import payloads

PAGE_SIZE = 100  # fal's maximum
BY_ENDPOINT = "/models/requests/by-endpoint"
BILLING_EVENTS = "/models/billing-events"
ACCOUNT_BILLING = "/account/billing"
PRICING = "/models/pricing"
BILLING_IDS_PER_CALL = 50  # fal's maximum of request ids per billing-events call


class PlatformUnavailable(Exception):
    """fal's record could not be read now (rate limit, outage, timeout): try later."""

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        self.detail = detail = redact(detail)  # fal's text may echo our key
        self.status_code = status_code
        super().__init__(f"fal's record: {status_code} {detail}" if status_code else detail)


@dataclass(frozen=True)
class RecordItem:
    """One finished request as fal's record lists it."""

    request_id: str
    endpoint_id: str
    status_code: int | None
    sent_at: datetime | None = None
    ended_at: datetime | None = None
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
        output = self.json_output  # None when the record kept none: no reason
        reason = payloads.detail_messages(output) or payloads.error_detail(output, "")
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


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


@dataclass(frozen=True)
class BillingEvent:
    """One billing event: what fal charged for (part of) a request."""

    request_id: str
    endpoint_id: str
    cost_nano_usd: int
    units: Decimal | None
    unit_price: Decimal | None

    @classmethod
    def from_raw(cls, raw: Any) -> BillingEvent | None:
        if not isinstance(raw, dict) or not raw.get("request_id"):
            return None
        cost = _decimal(raw.get("cost_estimate_nano_usd"))
        if cost is None:
            return None
        return cls(
            request_id=str(raw["request_id"]),
            endpoint_id=str(raw.get("endpoint_id") or ""),
            cost_nano_usd=int(cost),
            units=_decimal(raw.get("output_units")),
            unit_price=_decimal(raw.get("unit_price")),
        )


def _price(raw: Any) -> tuple[str, dict[str, str]] | None:
    """(endpoint, its unit price, unit as fal names it (e.g. "steps"), currency)."""
    if not isinstance(raw, dict) or not raw.get("endpoint_id"):
        return None
    price = _decimal(raw.get("unit_price"))
    if price is None:
        return None
    unit, currency = str(raw.get("unit") or ""), str(raw.get("currency") or "USD")
    return str(raw["endpoint_id"]), {"unit_price": str(price), "unit": unit, "currency": currency}


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
        ended_at=_when(raw.get("ended_at")),
        json_input=json_input if isinstance(json_input, dict) else None,
        json_output=raw.get("json_output"),
        has_output=raw.get("json_output") is not None,
    )


class PlatformClient:
    """One httpx client for a series of calls (a listing's pages, a reconcile run)."""

    def __init__(self, *, admin: bool = False) -> None:
        import httpx

        # Billing, balance and prices need an admin key (FAL_ADMIN_KEY, else the queue's).
        key = (settings.FAL_ADMIN_KEY or settings.FAL_KEY) if admin else settings.FAL_KEY
        if not key:
            raise PlatformUnavailable("FAL_KEY is not configured")
        self.calls = 0
        self._http = httpx.Client(
            base_url=settings.FAL_PLATFORM_API_URL.rstrip("/"),
            headers={"Authorization": f"Key {key}"},
            timeout=httpx.Timeout(settings.FAL_PLATFORM_TIMEOUT_SECONDS),
            follow_redirects=False,
        )

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _page(self, params: dict[str, Any], path: str = BY_ENDPOINT, items: str = "items") -> dict:
        import httpx

        self.calls += 1
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise PlatformUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
        try:
            body, readable = response.json(), True
        except ValueError:
            body, readable = None, False
        if not 200 <= response.status_code < 300:
            detail = payloads.error_detail(body, response.reason_phrase)[:300]
            raise PlatformUnavailable(detail, status_code=response.status_code)
        if not readable:
            raise PlatformUnavailable("unreadable answer (not JSON)")
        if not isinstance(body, dict) or (items and not isinstance(body.get(items), list)):
            raise PlatformUnavailable(f"unreadable answer (no {items or 'body'})")
        return body

    def find_request(self, endpoint: str, request_id: str) -> RecordItem | None:
        """The record of one request with its payloads, or None when fal has none (90 days)."""
        body = self._page(
            {"endpoint_id": endpoint, "request_id": request_id, "expand": "payloads", "limit": 1}
        )
        found = (item for item in map(_item, body["items"]) if item is not None)
        return next((item for item in found if item.request_id == request_id), None)

    def list_requests(
        self,
        endpoint: str,
        *,
        start: datetime,
        end: datetime,
        with_payloads: bool = False,
    ) -> Iterator[RecordItem]:
        """Every finished request of ``endpoint`` that ended in [start, end); past the page
        cap ``PlatformUnavailable``: a partial list must not be taken for the whole one."""
        params: dict[str, Any] = {
            "endpoint_id": endpoint,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "limit": PAGE_SIZE,
        }
        if with_payloads:
            params["expand"] = "payloads"
        cut = f"more than {settings.FAL_PLATFORM_MAX_PAGES} pages of {PAGE_SIZE}: listing cut short"
        yield from self._each(params, BY_ENDPOINT, "items", _item, cut)

    def _each(
        self, params: dict, path: str, items: str, parse: Any, cut: str | None = None
    ) -> Iterator[Any]:
        """Every item ``parse`` reads, page by page; ``cut`` past FAL_PLATFORM_MAX_PAGES."""
        for _page in range(settings.FAL_PLATFORM_MAX_PAGES):
            body = self._page(params, path, items)
            yield from (parsed for parsed in map(parse, body[items]) if parsed is not None)
            cursor = body.get("next_cursor")
            if not body.get("has_more") or not cursor:
                return
            params["cursor"] = cursor
        if cut:
            raise PlatformUnavailable(cut)

    def find_matching(
        self, endpoint: str, arguments: dict, *, since: datetime
    ) -> tuple[list[RecordItem], int]:
        """Requests since ``since`` sent with our input, earliest first; how many had none."""
        until = timezone.now() + timedelta(minutes=1)
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

    def billing_events(
        self, request_ids: list[str], *, start: datetime, end: datetime
    ) -> Iterator[BillingEvent]:
        """fal's billing events of up to 50 requests that ended in [start, end) (explicit:
        fal's default window is the last 24 hours)."""
        if not 1 <= len(request_ids) <= BILLING_IDS_PER_CALL:
            raise ValueError(f"1 to {BILLING_IDS_PER_CALL} request ids a call")
        params: dict[str, Any] = {
            "request_id": ",".join(request_ids),
            "start": start.isoformat(),
            "end": end.isoformat(),
            "limit": PAGE_SIZE,
        }
        cut = "too many pages of billing events: listing cut short"
        yield from self._each(params, BILLING_EVENTS, "billing_events", BillingEvent.from_raw, cut)

    def balance(self) -> tuple[Decimal, str]:
        """The account's credit balance and its currency."""
        body = self._page({"expand": "credits"}, ACCOUNT_BILLING, "")
        credits = body.get("credits")
        amount = _decimal(credits.get("current_balance") if isinstance(credits, dict) else None)
        if amount is None:
            raise PlatformUnavailable("unreadable answer (no credits.current_balance)")
        return amount, str(credits.get("currency") or "USD")  # type: ignore[union-attr]

    def prices(self, endpoints: list[str]) -> dict[str, dict[str, str]]:
        """fal's unit price of each endpoint (up to 50), by endpoint id."""
        return dict(self._each({"endpoint_id": ",".join(endpoints)}, PRICING, "prices", _price))


def find_request(endpoint: str, request_id: str) -> RecordItem | None:
    with PlatformClient() as client:
        return client.find_request(endpoint, request_id)


def find_matching(
    endpoint: str, arguments: dict, *, since: datetime
) -> tuple[list[RecordItem], int]:
    with PlatformClient() as client:
        return client.find_matching(endpoint, arguments, since=since)
