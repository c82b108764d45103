"""Per-key rate limits (token bucket: `limit` per minute, bursts up to `limit`) and concurrency caps.

One replica keeps its buckets in memory (`LocalRateLimiter`); several replicas share them in Redis
(`RedisRateLimiter`, chosen when `VMC_REDIS_URL` is set). If Redis cannot be reached the gateway fails
open: it logs a warning and limits each replica on its own until Redis answers again, so an outage
of Redis loosens the limit (to at most replicas × limit) but never refuses partners' requests.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Decision:
    """A rate limiter's answer to one request."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the bucket is full again
    retry_after: int  # until one more request is allowed (when refused)

    def headers(self) -> list[tuple[bytes, bytes]]:
        fixed = _LIMIT_HEADERS.get(self.limit)
        if fixed is None:
            if len(_LIMIT_HEADERS) > 1000:  # per-key overrides: a handful of distinct limits
                _LIMIT_HEADERS.clear()
            fixed = _LIMIT_HEADERS[self.limit] = (
                (b"ratelimit-limit", b"%d" % self.limit), (b"ratelimit-policy", b"%d;w=60" % self.limit))
        out = [fixed[0], (b"ratelimit-remaining", b"%d" % self.remaining), (b"ratelimit-reset", b"%d" % self.reset_seconds), fixed[1]]
        if not self.allowed:
            out.append((b"retry-after", b"%d" % self.retry_after))
        return out


# A limit's RateLimit-Limit and RateLimit-Policy headers, made once per distinct limit.
_LIMIT_HEADERS: dict[int, tuple[tuple[bytes, bytes], tuple[bytes, bytes]]] = {}


def _decide(tokens: float, limit: int, allowed: bool) -> Decision:
    rate = limit / 60.0
    return Decision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, int(tokens + 1e-4)),  # 5.99999 tokens left after float arithmetic are 6
        reset_seconds=math.ceil((limit - tokens) / rate),
        retry_after=0 if allowed else max(1, math.ceil((1 - tokens) / rate)),
    )


class LocalRateLimiter:
    """In-process buckets: right for one gateway replica (the embedded default)."""

    # Buckets idle this long are full again and can be forgotten (bounds memory under many
    # addresses hitting the failed-authentication bucket).
    PRUNE_AFTER_SECONDS = 120.0

    def __init__(self):
        self._buckets: dict[str, tuple[float, float]] = {}
        self._pruned_at = time.monotonic()

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < self.PRUNE_AFTER_SECONDS:
            return
        self._pruned_at = now
        cutoff = now - self.PRUNE_AFTER_SECONDS
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if bucket[1] >= cutoff}

    async def hit(self, key_id: str, limit: int) -> Decision:
        return self.hit_now(key_id, limit)

    def hit_now(self, key_id: str, limit: int) -> Decision:
        """`hit` without awaiting: the buckets are in memory."""
        now = time.monotonic()
        self._prune(now)
        tokens, stamp = self._buckets.get(key_id, (float(limit), now))
        tokens = min(float(limit), tokens + (now - stamp) * limit / 60.0)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key_id] = (tokens, now)
        return _decide(tokens, limit, allowed)

    async def close(self) -> None:
        pass


# GCRA (the token bucket as one "theoretical arrival time" per key), atomic in Redis, on Redis's
# clock so replicas whose clocks differ still agree. Returns {allowed, tat - now} as strings
# (Lua numbers would be truncated to integers on the way out).
_GCRA = """
local limit = tonumber(ARGV[1])
local interval = 60.0 / limit
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > 60.0001 then
  return {'0', string.format('%.6f', tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {'1', string.format('%.6f', new_tat - now)}
"""


class RedisRateLimiter:
    """Buckets shared by every gateway replica through Redis; falls back to local ones if Redis is away."""

    def __init__(self, url: str, *, prefix: str = "vmc:ratelimit:", retry_after_failure: float = 1.0, timeout: float = 0.25):
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self._redis.register_script(_GCRA)
        self._prefix = prefix
        self._fallback = LocalRateLimiter()
        self._retry_after_failure = retry_after_failure
        self._down_until = 0.0
        self.failures = 0

    def hit_now(self, key_id: str, limit: int) -> Decision | None:
        """The decision if it can be made without waiting (Redis away: the local buckets), else None
        and nothing counted: the caller awaits `hit`."""
        if time.monotonic() < self._down_until:
            return self._fallback.hit_now(key_id, limit)
        return None

    async def hit(self, key_id: str, limit: int) -> Decision:
        if time.monotonic() < self._down_until:
            return self._fallback.hit_now(key_id, limit)
        try:
            allowed, ahead = await self._script(keys=[self._prefix + key_id], args=[limit])
        except Exception as exc:  # noqa: BLE001 - any Redis failure: fail open on the local buckets
            self.failures += 1
            # Do not wait on a dead Redis for every request: try again after a short pause.
            self._down_until = time.monotonic() + self._retry_after_failure
            log.warning("Redis rate limiter unreachable; limiting per replica meanwhile", extra={"error": repr(exc)})
            return self._fallback.hit_now(key_id, limit)
        tokens = limit - float(ahead) * limit / 60.0
        return _decide(max(0.0, tokens), limit, allowed == b"1")

    async def close(self) -> None:
        await self._redis.aclose()


def make_limiter(redis_url: str):
    return RedisRateLimiter(redis_url) if redis_url else LocalRateLimiter()


class ConcurrencyLimiter:
    """At most `cap` requests of one key in flight, so one partner cannot take every worker."""

    def __init__(self, cap: int):
        self.cap = cap
        self._in_flight: dict[str, int] = {}

    def available(self, key_id: str) -> bool:
        return self._in_flight.get(key_id, 0) < self.cap

    def acquire(self, key_id: str) -> bool:
        current = self._in_flight.get(key_id, 0)
        if current >= self.cap:
            return False
        self._in_flight[key_id] = current + 1
        return True

    def release(self, key_id: str) -> None:
        current = self._in_flight.get(key_id, 1) - 1
        if current <= 0:
            self._in_flight.pop(key_id, None)
        else:
            self._in_flight[key_id] = current
