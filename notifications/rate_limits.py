"""Telegram's sending limits (a second per chat, 20 a minute per group, 25 a second in all),
kept in the database or Redis so they hold across workers, hosts and restarts.
See docs/architecture.md#exactly-one-message-per-outcome.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from notifications.models import RateLimitMark, SenderState

# Marks older than the longest window are useless; keep a little more for the admin.
_KEEP = timedelta(seconds=75)
# Pruning is one DELETE; once every this many slots keeps the table small enough.
_PRUNE_EVERY = 25


class NoSlot(Exception):
    """The limits want a longer wait than the sender may sleep: hand the message back."""

    def __init__(self, wait: float):
        self.wait = wait


def take(chat_id: int, may_sleep: float = 0.0) -> None:
    """Take a send slot, sleeping through waits up to ``may_sleep``; a longer one: ``NoSlot``."""
    while (wait := reserve(chat_id)) > 0:
        if wait > may_sleep:
            raise NoSlot(wait)
        time.sleep(wait)


def reserve(chat_id: int, *, now: datetime | None = None) -> float:
    """Take a send slot for ``chat_id`` now (returns 0.0) or say how many seconds to wait."""
    if settings.REDIS_URL:
        return _reserve_in_redis(chat_id, now or timezone.now())
    with transaction.atomic():
        SenderState.objects.select_for_update().get_or_create(pk=1)
        now = now or timezone.now()
        chat = RateLimitMark.objects.filter(chat_id=chat_id)
        every = RateLimitMark.objects.all()
        overall = settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND
        # (marks, window, how many fit in it). Overall: evenly spaced (1/limit s apart), so
        # network jitter cannot bunch two bursts into one second at Telegram's end; the
        # one-second window is the hard ceiling.
        limits = [
            (chat, timedelta(seconds=settings.NOTIFICATION_RATE_PER_CHAT_SECONDS), 1),
            (every, timedelta(seconds=1 / overall), 1),
            (every, timedelta(seconds=1), overall),
        ]
        if chat_id < 0:  # a group or supergroup (users' private chats have positive ids)
            limits.append((chat, timedelta(minutes=1), settings.NOTIFICATION_RATE_GROUP_PER_MINUTE))
        wait = max(_window_wait(marks, now, window, limit) for marks, window, limit in limits)
        if wait > 0:
            return wait
        mark = RateLimitMark.objects.create(chat_id=chat_id, sent_at=now)
        if mark.pk % _PRUNE_EVERY == 0:
            RateLimitMark.objects.filter(sent_at__lt=now - _KEEP).delete()
    return 0.0


def _window_wait(marks, now: datetime, window: timedelta, limit: int) -> float:
    """Seconds until the window holds fewer than ``limit`` marks (0.0 if it already does)."""
    recent = list(
        marks.filter(sent_at__gt=now - window)
        .order_by("-sent_at")
        .values_list("sent_at", flat=True)[:limit]
    )
    if len(recent) < limit:
        return 0.0
    # The limit-th newest mark has to leave the window before another send fits.
    return max(0.0, (recent[-1] + window - now).total_seconds())


# KEYS: the chat's sorted set, the overall sorted set. Scores are milliseconds.
# ARGV: now, per-chat gap, is group (0/1), group limit, overall limit, overall spacing,
# a unique member, how long to keep marks.
_RESERVE_LUA = """
local now = tonumber(ARGV[1])
local wait = 0
local function newest(key, rank)
  local hit = redis.call('ZREVRANGE', key, rank, rank, 'WITHSCORES')
  if hit[2] then return tonumber(hit[2]) end
  return nil
end
local last = newest(KEYS[1], 0)
if last then wait = math.max(wait, last + tonumber(ARGV[2]) - now) end
if ARGV[3] == '1' then
  local limit = tonumber(ARGV[4])
  if redis.call('ZCOUNT', KEYS[1], '(' .. (now - 60000), '+inf') >= limit then
    wait = math.max(wait, newest(KEYS[1], limit - 1) + 60000 - now)
  end
end
local latest = newest(KEYS[2], 0)
if latest then wait = math.max(wait, latest + tonumber(ARGV[6]) - now) end
local overall = tonumber(ARGV[5])
if redis.call('ZCOUNT', KEYS[2], '(' .. (now - 1000), '+inf') >= overall then
  wait = math.max(wait, newest(KEYS[2], overall - 1) + 1000 - now)
end
if wait > 0 then return tostring(wait) end
local keep = tonumber(ARGV[8])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[7])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
  redis.call('PEXPIRE', key, keep)
end
return '0'
"""
_redis_clients: dict[str, object] = {}


def redis_client():
    """The process's client for REDIS_URL (shared by every limit kept in Redis)."""
    import redis  # only with REDIS_URL: an optional dependency, not a cycle

    url = settings.REDIS_URL
    assert url, "only called when REDIS_URL is set"
    if url not in _redis_clients:
        _redis_clients[url] = redis.Redis.from_url(url)
    return _redis_clients[url]


def _reserve_in_redis(chat_id: int, now: datetime) -> float:
    prefix = f"{settings.Q_CLUSTER['name']}:telegram-rate"
    # Whole milliseconds: Lua numbers print with 14 significant digits.
    now_ms = int(now.timestamp() * 1000)
    wait_ms = redis_client().eval(
        _RESERVE_LUA,
        2,
        f"{prefix}:chat:{chat_id}",
        f"{prefix}:all",
        now_ms,
        int(settings.NOTIFICATION_RATE_PER_CHAT_SECONDS * 1000),
        "1" if chat_id < 0 else "0",
        settings.NOTIFICATION_RATE_GROUP_PER_MINUTE,
        settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND,
        int(1000 / settings.NOTIFICATION_RATE_GLOBAL_PER_SECOND),
        uuid.uuid4().hex,
        int(_KEEP.total_seconds() * 1000),
    )
    return max(0.0, float(wait_ms) / 1000)
