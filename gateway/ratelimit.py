"""Per-key rate limits (token bucket: `limit` per minute, bursts up to `limit`) and concurrency caps."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the bucket is full again
    retry_after: int  # until one more request is allowed (when refused)

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_seconds).encode()),
            (b"ratelimit-policy", f"{self.limit};w=60".encode()),
        ]
        if not self.allowed:
            out.append((b"retry-after", str(self.retry_after).encode()))
        return out


def _decide(tokens: float, limit: int, allowed: bool) -> Decision:
    rate = limit / 60.0
    return Decision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, int(tokens)),
        reset_seconds=math.ceil((limit - tokens) / rate),
        retry_after=0 if allowed else max(1, math.ceil((1 - tokens) / rate)),
    )


class LocalRateLimiter:
    """In-process buckets: right for one gateway replica (the embedded default)."""

    def __init__(self):
        self._buckets: dict[str, tuple[float, float]] = {}

    async def hit(self, key_id: str, limit: int) -> Decision:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key_id, (float(limit), now))
        tokens = min(float(limit), tokens + (now - stamp) * limit / 60.0)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key_id] = (tokens, now)
        return _decide(tokens, limit, allowed)

    async def close(self) -> None:
        pass


class ConcurrencyLimiter:
    """At most `cap` requests of one key in flight, so one partner cannot take every worker."""

    def __init__(self, cap: int):
        self.cap = cap
        self._in_flight: dict[str, int] = {}

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
