"""Rate limiters: the in-process bucket, the Redis one shared by replicas, and its fail-open fallback."""
from __future__ import annotations

import logging
import socket
import uuid

import pytest

from gateway.ratelimit import ConcurrencyLimiter, LocalRateLimiter, RedisRateLimiter
from deploy.processes import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(not redis_reachable(), reason="no Redis at 127.0.0.1:6379")


async def test_local_bucket_allows_the_limit_then_refuses_with_retry_after():
    limiter = LocalRateLimiter()
    decisions = [await limiter.hit("k", 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = dict(decisions[-1].headers())
    assert refused[b"retry-after"] == b"20"  # 3 a minute: one token every 20 s
    assert refused[b"ratelimit-limit"] == b"3" and refused[b"ratelimit-policy"] == b"3;w=60"
    assert (await limiter.hit("other", 3)).allowed  # buckets are per key


@needs_redis
async def test_redis_buckets_are_shared_between_limiters():
    first, second = RedisRateLimiter(REDIS_URL), RedisRateLimiter(REDIS_URL)  # two gateway replicas
    key = str(uuid.uuid4())
    try:
        decisions = [await (first if i % 2 else second).hit(key, 5) for i in range(8)]
    finally:
        await first.close()
        await second.close()
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[-1].retry_after == 12  # 5 a minute: one every 12 s


async def test_redis_down_fails_open_on_local_buckets(caplog):
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", retry_after_failure=60)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
            decisions = [await limiter.hit("k", 2) for _ in range(3)]
    finally:
        await limiter.close()
    # Still limited, per replica: a Redis outage neither refuses everything nor lifts the limit.
    assert [d.allowed for d in decisions] == [True, True, False]
    assert limiter.failures == 1  # Redis is not asked again during the pause after a failure
    assert "Redis rate limiter unreachable" in caplog.text


def test_concurrency_cap_is_per_key_and_released():
    cap = ConcurrencyLimiter(2)
    assert cap.acquire("a") and cap.acquire("a")
    assert not cap.acquire("a")
    assert cap.acquire("b")
    cap.release("a")
    assert cap.acquire("a")


async def test_local_buckets_idle_long_enough_are_forgotten(monkeypatch):
    from gateway import ratelimit

    clock = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: clock[0])
    limiter = ratelimit.LocalRateLimiter()
    for address in range(100):
        await limiter.hit(f"auth-failures:10.0.0.{address}", 30)
    assert len(limiter._buckets) == 100
    clock[0] += limiter.PRUNE_AFTER_SECONDS + 1
    decision = await limiter.hit("key-a", 5)
    assert decision.allowed and decision.remaining == 4
    assert list(limiter._buckets) == ["key-a"]
