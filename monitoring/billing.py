"""Money: what each training cost, fal's balance and the hold on new starts, spend figures.

fal's HTTP lives in ``monitoring.fal.platform``; the rules are in docs/billing.md.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import connections, router, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from monitoring import totals
from monitoring.fal import payloads, platform
from monitoring.models import (
    Avatar,
    AvatarStatus,
    CostState,
    FalAccount,
    HoldReason,
    Training,
    TrainingType,
)
from notifications import messages, outbox

logger = logging.getLogger("monitoring")

NANO = 10**9
SPEND_TOTAL = "fal_spend_nano_usd"  # running total per endpoint (/metrics)
# How long a claimed batch of lookups is ours; a crashed run's batch is due again after.
LOOKUP_LEASE = timedelta(minutes=10)
LOOKUP_BACKOFF_MAX = timedelta(hours=2)
PRICES_MAX_AGE = timedelta(hours=1)
# fal's trainers' default steps (shared/fal-facts.md), for a quote without ``steps``.
DEFAULT_STEPS: dict[str, int] = {TrainingType.PORTRAIT: 2500, TrainingType.STYLE: 1000}
_Events = dict[str, list[platform.BillingEvent]]  # billing events by request id


def usd(nano: int | None) -> Decimal | None:
    """nano-USD as dollars with six decimals (exact: 1e9 nano-USD per dollar)."""
    if nano is None:
        return None
    return (Decimal(nano) / NANO).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def usd_text(nano: int | None) -> str | None:
    amount = usd(nano)
    return None if amount is None else f"{amount:.6f}"


def cents(amount: Decimal | float | None) -> str:
    return "—" if amount is None else f"${Decimal(str(amount)):,.2f}"


def configured() -> bool:
    """Whether a key that may read billing is set (and fal has not refused it)."""
    if not (settings.FAL_ADMIN_KEY or settings.FAL_KEY):
        return False
    return not FalAccount.objects.filter(pk=1, billing_refused=True).exists()


@dataclass
class LookupReport:
    looked_up: int = 0
    billed: int = 0
    not_billed: int = 0
    calls: int = 0
    error: str = ""


def _claim(ids: list[int], now: datetime) -> list[Training]:
    """Take these due attempts for this run (a conditional UPDATE with a token of ours)."""
    token = now + LOOKUP_LEASE + timedelta(microseconds=secrets.randbelow(10**6))
    Training.objects.filter(pk__in=ids).filter(
        Q(cost_state="") | Q(cost_state=CostState.PENDING, cost_next_lookup_at__lte=now)
    ).update(cost_state=CostState.PENDING, cost_next_lookup_at=token)
    return list(
        Training.objects.filter(
            pk__in=ids, cost_state=CostState.PENDING, cost_next_lookup_at=token
        ).only("id", "endpoint", "fal_request_id", "created_at", "finished_at", "cost_lookups")
    )


def _record(claimed: list[Training], events: _Events, now: datetime, report: LookupReport) -> None:
    """Write what fal billed (one statement for the batch), add it to the running totals."""
    wait = timedelta(hours=settings.FAL_BILLING_WAIT_HOURS)
    spent: dict[str, int] = defaultdict(int)
    report.looked_up += len(claimed)
    for training in claimed:
        training.cost_lookups += 1
        found = events.get(training.fal_request_id or "")
        give_up = (training.finished_at or now) + wait
        if found:
            training.cost_state = CostState.BILLED
            training.cost_nano_usd = sum(e.cost_nano_usd for e in found)
            units = [e.units for e in found if e.units is not None]
            training.cost_units = sum(units, Decimal(0)) if units else None
            training.cost_unit_price = found[-1].unit_price
            training.cost_next_lookup_at = None
            spent[found[-1].endpoint_id or training.endpoint] += training.cost_nano_usd
            report.billed += 1
        elif not training.fal_request_id or now >= give_up:
            # Never sent (no job, nothing billed), or fal billed nothing in the window.
            training.cost_state = CostState.NOT_BILLED
            training.cost_next_lookup_at = None
            report.not_billed += 1
        else:
            backoff = min(timedelta(minutes=2**training.cost_lookups), LOOKUP_BACKOFF_MAX)
            training.cost_next_lookup_at = min(now + backoff, give_up)
    # An UPDATE per row through executemany (pipelined by psycopg): ``bulk_update``'s CASE
    # per field and row spent ten times longer in Python (bench/billing.py).
    connection = connections[router.db_for_write(Training)]
    ops, quote = connection.ops, connection.ops.quote_name
    columns = "state nano_usd units unit_price lookups next_lookup_at".split()
    sets = ", ".join(f"{quote('cost_' + column)} = %s" for column in columns)
    sql = f"UPDATE {quote(Training._meta.db_table)} SET {sets} WHERE {quote('id')} = %s"
    rows = [
        (
            t.cost_state,
            t.cost_nano_usd,
            ops.adapt_decimalfield_value(t.cost_units, 24, 6),
            ops.adapt_decimalfield_value(t.cost_unit_price, 24, 9),
            t.cost_lookups,
            ops.adapt_datetimefield_value(t.cost_next_lookup_at),
            t.pk,
        )
        for t in claimed
    ]
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        for endpoint, amount in sorted(spent.items()):
            totals.add(SPEND_TOTAL, {"endpoint": endpoint}, amount)


def _events(client: platform.PlatformClient, claimed: list[Training], now: datetime) -> _Events:
    ids = [t.fal_request_id for t in claimed if t.fal_request_id]
    if not ids:
        return {}
    # fal's default window is the last day: ask from (just before) the first start.
    end = now + timedelta(minutes=1)
    start = max(min(t.created_at for t in claimed) - timedelta(hours=1), end - timedelta(days=90))
    found: _Events = defaultdict(list)
    for event in client.billing_events(ids, start=start, end=end):
        found[event.request_id].append(event)
    return found


def look_up_costs(*, now: datetime | None = None, limit: int = 10_000) -> LookupReport:
    """The task: billing events of the finished attempts that are due (see module doc)."""
    if not configured():
        return LookupReport(error="not configured")
    report = LookupReport()
    now = now or timezone.now()
    due = Training.objects.cost_due(now).order_by("finished_at", "pk")
    ids = list(due.values_list("pk", flat=True)[:limit])
    if not ids:
        return report
    client = platform.PlatformClient(admin=True)
    try:
        with client:
            for start in range(0, len(ids), platform.BILLING_IDS_PER_CALL):
                claimed = _claim(ids[start : start + platform.BILLING_IDS_PER_CALL], now)
                if not claimed:
                    continue
                try:
                    events = _events(client, claimed, now)
                except platform.PlatformUnavailable:
                    # Try again in a minute: an answer we could not get is no verdict.
                    Training.objects.filter(pk__in=[t.pk for t in claimed]).update(
                        cost_next_lookup_at=now + timedelta(minutes=1)
                    )
                    raise
                _record(claimed, events, now, report)
    except platform.PlatformUnavailable as exc:
        report.error = str(exc)
        if exc.status_code in (401, 403):
            FalAccount.current()
            FalAccount.objects.filter(pk=1).update(billing_refused=True, last_error=str(exc)[:2000])
        logger.warning("fal billing lookup stopped: %s", exc)
    report.calls = client.calls
    return report


def costs_of(request_ids: list[str], *, start: datetime, end: datetime) -> dict[str, int]:
    """What fal billed for these requests (nano-USD by request id; absent: none found)."""
    found: dict[str, int] = defaultdict(int)
    if not request_ids or not configured():
        return found
    with platform.PlatformClient(admin=True) as client:
        for first in range(0, len(request_ids), platform.BILLING_IDS_PER_CALL):
            chunk = request_ids[first : first + platform.BILLING_IDS_PER_CALL]
            for event in client.billing_events(chunk, start=start, end=end):
                found[event.request_id] += event.cost_nano_usd
    return found


def _billed(since: datetime) -> Any:
    return Training.objects.filter(cost_state=CostState.BILLED, finished_at__gte=since)


def _total(trainings: Any) -> int:
    return trainings.aggregate(total=Coalesce(Sum("cost_nano_usd"), 0))["total"]


def spent_nano(since: datetime) -> int:
    return _total(_billed(since))


@dataclass
class Spend:
    today: int = 0
    week: int = 0
    month: int = 0
    by_trainer: list[tuple[str, int]] = field(default_factory=list)
    top_owners: list[dict[str, Any]] = field(default_factory=list)
    completed_avatars: int = 0
    per_completed_avatar: int | None = None


def spend(now: datetime | None = None, *, owners: int = 5) -> Spend:
    """The dashboard's figures (a completed avatar's cost includes its failed attempts)."""
    now = now or timezone.now()
    month = now - timedelta(days=30)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    result = Spend(
        today=spent_nano(midnight),
        week=spent_nano(now - timedelta(days=7)),
        month=spent_nano(month),
    )
    result.by_trainer = list(
        _billed(month)
        .values_list("endpoint")
        .annotate(total=Sum("cost_nano_usd"))
        .order_by("-total", "endpoint")
    )
    result.top_owners = list(
        _billed(month)
        .values("avatar__owner_id", "avatar__owner__username", "avatar__owner__telegram_id")
        .annotate(total=Sum("cost_nano_usd"), trainings=Count("id"))
        .order_by("-total")[:owners]
    )
    completed = Avatar.objects.filter(
        status=AvatarStatus.COMPLETED, current_training__finished_at__gte=month
    )
    result.completed_avatars = completed.count()
    if result.completed_avatars:
        total = _total(Training.objects.filter(avatar__in=completed, cost_state=CostState.BILLED))
        result.per_completed_avatar = total // result.completed_avatars
    return result


class PricesUnavailable(Exception):
    """fal's unit prices could not be read (no admin key, fal trouble)."""


def prices() -> dict[str, dict[str, str]]:
    """fal's unit price of each trainer, read at most once an hour (kept in the database)."""
    now = timezone.now()
    account = FalAccount.current()
    if account.prices and account.prices_read_at and now - account.prices_read_at < PRICES_MAX_AGE:
        return account.prices
    if not configured():
        raise PricesUnavailable("fal's prices need an admin key (FAL_ADMIN_KEY)")
    try:
        with platform.PlatformClient(admin=True) as client:
            table = client.prices(sorted(set(payloads.ENDPOINTS.values())))
    except platform.PlatformUnavailable as exc:
        if account.prices:
            return account.prices  # an hour-old price beats none
        raise PricesUnavailable(str(exc)) from exc
    FalAccount.objects.filter(pk=1).update(prices=table, prices_read_at=now)
    return table


@dataclass(frozen=True)
class Quote:
    endpoint: str
    unit: str
    unit_price: Decimal
    quantity: int
    nano_usd: int

    def as_json(self) -> dict[str, Any]:
        return {
            "usd": usd_text(self.nano_usd),
            "unit": self.unit,
            "unit_price": str(self.unit_price),
            "quantity": self.quantity,
            "endpoint": self.endpoint,
        }


def quote(training_type: str, steps: int | None = None) -> Quote:
    """An estimate from fal's unit price: per step when fal prices per step, else one unit."""
    endpoint = payloads.ENDPOINTS[training_type]
    price = prices().get(endpoint)
    if price is None:
        raise PricesUnavailable(f"fal lists no price for {endpoint}")
    unit_price = Decimal(price["unit_price"])
    per_step = "step" in price["unit"].lower()
    quantity = (steps or DEFAULT_STEPS[training_type]) if per_step else 1
    nano = int((unit_price * quantity * NANO).to_integral_value(rounding=ROUND_HALF_UP))
    return Quote(endpoint, price["unit"], unit_price, quantity, nano)


def _estimate(training_type: str, arguments: dict | None) -> int:
    steps = (arguments or {}).get("steps")
    valid = isinstance(steps, int) and not isinstance(steps, bool) and steps > 0
    return quote(training_type, steps if valid else None).nano_usd


def estimate_nano(avatars: list[Avatar]) -> int:
    """The estimate of starting each of ``avatars`` once (the admin's confirmation)."""
    return sum(_estimate(a.training_type, a.training_settings) for a in avatars)


def over_budget(client: Any) -> tuple[bool, dict[str, str]]:
    """Whether an ApiClient's known spend today plus its running estimate reached its budget."""
    budget = client.daily_budget_usd
    if budget is None:
        return False, {}
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    mine = Training.objects.filter(avatar__api_link__client=client)
    known = _total(mine.filter(cost_state=CostState.BILLED, finished_at__gte=midnight))
    # Running, or finished today and not billed yet: the estimate stands in for the bill.
    unbilled = mine.filter(finished_at__isnull=True) | mine.filter(
        cost_state__in=["", CostState.PENDING],
        finished_at__gte=midnight,
        fal_request_id__isnull=False,
    )
    running = 0
    for training in unbilled.select_related("avatar").only("arguments", "avatar__training_type"):
        with contextlib.suppress(PricesUnavailable):  # no estimate: only what is known counts
            running += _estimate(training.avatar.training_type, training.arguments)
    limit = int(Decimal(budget) * NANO)
    figures = {
        "budget_usd": f"{Decimal(budget):.2f}",
        "spent_usd": usd_text(known) or "0",
        "running_estimate_usd": usd_text(running) or "0",
    }
    return known + running >= limit, figures


def hold_reason(now: datetime | None = None) -> str:
    """Why new starts are held now ("" when they are not): a locked account, or a fresh
    reading below FAL_BALANCE_HOLD_USD. An unknown, failed or stale reading never holds."""
    now = now or timezone.now()
    row = (
        FalAccount.objects.filter(pk=1)
        .values("balance_usd", "read_at", "last_attempt_at", "locked_since")
        .first()
    )
    if row is None:
        return ""
    if row["locked_since"] is not None:
        return HoldReason.ACCOUNT_LOCKED
    read_at, balance = row["read_at"], row["balance_usd"]
    if balance is None or read_at is None or row["last_attempt_at"] != read_at:
        return ""
    stale = now - read_at > timedelta(seconds=2 * settings.FAL_BALANCE_CHECK_SECONDS + 60)
    low = balance < Decimal(str(settings.FAL_BALANCE_HOLD_USD))
    return HoldReason.BALANCE_LOW if low and not stale else ""


def account_locked(detail: str) -> None:
    """fal refused a submit with 403: hold every start and alert staff (one episode)."""
    now = timezone.now()
    FalAccount.current()
    FalAccount.objects.filter(pk=1, locked_since__isnull=True).update(locked_since=now)
    _open_episode(now, locked_detail=detail)


def _hours_left(balance: Decimal, now: datetime) -> tuple[float | None, int]:
    day = spent_nano(now - timedelta(hours=24))
    if day <= 0:
        return None, day
    return float(balance / (Decimal(day) / NANO / 24)), day  # at the last day's pace


def _open_episode(now: datetime, *, locked_detail: str = "") -> None:
    """One staff message per episode: only the caller that opens it writes one."""
    if not FalAccount.objects.filter(pk=1, alert_since__isnull=True).update(alert_since=now):
        return
    account = FalAccount.current()
    balance = account.balance_usd
    hours_left, day = _hours_left(balance, now) if balance is not None else (None, 0)
    text = messages.render_fal_balance_message(
        balance=cents(balance) if balance is not None else None,
        read_at=account.read_at,
        alert_usd=cents(settings.FAL_BALANCE_ALERT_USD),
        hold_usd=cents(settings.FAL_BALANCE_HOLD_USD),
        spent_day=cents(usd(day)),
        hours_left=hours_left,
        holding=balance is not None and balance < Decimal(str(settings.FAL_BALANCE_HOLD_USD)),
        locked_detail=locked_detail,
        held=Training.objects.held().count(),
    )
    outbox.queue_fal_balance_alert(
        since=now,
        text=text,
        context={
            "balance_usd": str(balance) if balance is not None else None,
            "locked": bool(locked_detail),
        },
    )


@dataclass
class BalanceReading:
    balance: Decimal | None = None
    error: str = ""
    hold: str = ""


def read_balance(*, now: datetime | None = None) -> BalanceReading:
    """Read fal's balance once; open or close the alert episode (the task releases held starts)."""
    now = now or timezone.now()
    FalAccount.current()
    if not (settings.FAL_ADMIN_KEY or settings.FAL_KEY):
        FalAccount.objects.filter(pk=1).update(last_attempt_at=now, last_error="not configured")
        return BalanceReading(error="not configured")
    reading = BalanceReading()
    try:
        with platform.PlatformClient(admin=True) as client:
            balance, _currency = client.balance()
    except platform.PlatformUnavailable as exc:
        reading.error = str(exc)[:2000]
        FalAccount.objects.filter(pk=1).update(
            last_attempt_at=now,
            last_error=reading.error,
            billing_refused=exc.status_code in (401, 403),
        )
        logger.warning("fal balance not read: %s", exc)
        return reading
    reading.balance = balance
    FalAccount.objects.filter(pk=1).update(
        balance_usd=balance, read_at=now, last_attempt_at=now, last_error="", billing_refused=False
    )
    if balance >= Decimal(str(settings.FAL_BALANCE_HOLD_USD)):
        FalAccount.objects.filter(pk=1).update(locked_since=None)
    hours_left, _day = _hours_left(balance, now)
    low = balance < Decimal(str(settings.FAL_BALANCE_ALERT_USD))
    running_out = hours_left is not None and hours_left < settings.FAL_BALANCE_ALERT_HOURS
    if low or running_out:
        _open_episode(now)
    else:
        FalAccount.objects.filter(pk=1, locked_since__isnull=True).update(alert_since=None)
    reading.hold = hold_reason(now)
    return reading


def account_unlocked() -> None:
    """fal accepted a submit: the account is not locked (any more)."""
    FalAccount.objects.filter(pk=1, locked_since__isnull=False).update(locked_since=None)


def account_state() -> dict[str, Any]:
    """What the dashboard and /metrics show of the account."""
    account = FalAccount.objects.filter(pk=1).first() or FalAccount()  # unsaved: all unknown
    return {
        "configured": configured(),
        "balance_usd": account.balance_usd,
        "read_at": account.read_at,
        "last_error": account.last_error,
        "locked_since": account.locked_since,
        "alert_since": account.alert_since,
        "hold": hold_reason(),
        "held": Training.objects.held().count(),
    }
