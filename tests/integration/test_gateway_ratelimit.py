"""Per-key rate limits (429 with Retry-After and RateLimit headers), shared by replicas through Redis,
and the cap on one key's concurrent requests."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import eventually
from tests.gateway_inprocess import SilentUpstream, running_gateway, settings_for
from tests.harness import unique
from tests.unit.test_gateway_ratelimit import REDIS_URL, needs_redis

ORG = "5d7e9f1a-2b3c-4d5e-8f6a-7b8c9d0e1f2a"


async def new_key(admin: httpx.AsyncClient, **overrides) -> str:
    body = {"name": unique("rl"), "organization_id": ORG, "scopes": ["registry:read", "analytics:read"], **overrides}
    created = await admin.post("/admin/api-keys", json=body)
    assert created.status_code == 201, created.text
    return created.json()["key"]


async def test_over_the_limit_is_429_with_retry_after_and_ratelimit_headers(stack, admin):
    limited, other = await new_key(admin, rate_limit_per_minute=3), await new_key(admin)
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {limited}"}) as client:
        answers = [await client.get("/organizations") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 429 and "3 requests a minute" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "20" and refused.headers["ratelimit-limit"] == "3"
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {other}"}) as client:
        assert (await client.get("/organizations")).status_code == 200  # another key is not starved
        assert (await client.get("/organizations")).headers["ratelimit-limit"] == "600"  # the default
    metrics = httpx.get(stack.urls["gateway"] + "/metrics").text
    assert 'vmc_rate_limited_total{reason="rate"}' in metrics


@pytest.mark.parametrize("shared", [pytest.param(True, marks=needs_redis), False], ids=["redis", "in-process"])
async def test_two_replicas_share_the_limit_through_redis(stack, admin, shared):
    key = await new_key(admin, rate_limit_per_minute=4)
    redis_url = REDIS_URL if shared else ""
    async with (
        running_gateway(settings_for(stack, redis_url=redis_url), key) as (_, first),
        running_gateway(settings_for(stack, redis_url=redis_url), key) as (_, second),
    ):
        statuses = [(await (first if i % 2 else second).get("/api/v1/organizations")).status_code for i in range(10)]
    allowed = statuses.count(200)
    assert statuses.count(429) == 10 - allowed
    # Shared buckets: 4 in all. Buckets per replica (the embedded default, one replica): 4 each.
    assert allowed == (4 if shared else 8)


async def test_one_key_cannot_take_every_connection(stack, admin):
    greedy, patient = await new_key(admin), await new_key(admin)
    async with SilentUpstream() as hanging:
        settings = settings_for(stack, registry_url=hanging.url, upstream_timeout_seconds=1.0, max_concurrent_per_key=2)
        async with running_gateway(settings) as (_, client):
            def get(key: str, path: str):
                return client.get(path, headers={"Authorization": f"Bearer {key}"})

            stuck = [asyncio.create_task(get(greedy, "/api/v1/organizations")) for _ in range(2)]
            async def both_in_flight() -> bool:  # held by the hanging service
                return hanging.connections == 2

            await eventually(both_in_flight, timeout=5, interval=0.01, what="two requests in flight")
            third = await get(greedy, "/api/v1/analytics/overview")
            assert third.status_code == 429 and "concurrent" in third.json()["detail"]
            assert third.headers["retry-after"] == "1"
            assert (await get(patient, "/api/v1/analytics/overview")).status_code == 200
            assert [t.status_code for t in await asyncio.gather(*stuck)] == [504, 504]
            assert (await get(greedy, "/api/v1/analytics/overview")).status_code == 200  # slots given back
