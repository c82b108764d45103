"""A slow service is a fast 504, a dead one a fast 503 (then an open circuit), and the others keep answering."""
from __future__ import annotations

import asyncio
import time

import pytest

from deploy.processes import free_port
from tests.conftest import eventually
from tests.gateway_inprocess import SilentUpstream, TinyUpstream, running_gateway, settings_for

PROBLEM = "application/problem+json"


async def test_hanging_service_is_a_504_within_its_timeout_and_others_answer(stack):
    async with SilentUpstream() as hanging:
        settings = settings_for(stack, registry_url=hanging.url, upstream_timeout_seconds=0.5)
        async with running_gateway(settings, stack.admin_key) as (_, client):
            started = time.monotonic()
            stuck = asyncio.create_task(client.get("/api/v1/organizations"))
            # While the registry hangs, analytics answers at once.
            other = await client.get("/api/v1/analytics/overview")
            assert other.status_code == 200, other.text
            assert not stuck.done()
            answer = await stuck
            elapsed = time.monotonic() - started
    assert answer.status_code == 504 and answer.headers["content-type"] == PROBLEM
    assert "registry" in answer.json()["detail"]
    assert 0.5 <= elapsed < 1.5  # one attempt only: a timeout is never retried
    assert hanging.connections == 1


async def test_dead_service_is_a_fast_503_then_the_circuit_opens_and_closes(stack):
    port = free_port()  # nothing listens there yet
    settings = settings_for(
        stack, activities_url=f"http://127.0.0.1:{port}", circuit_failure_threshold=3, circuit_cooldown_seconds=1.0
    )
    async with running_gateway(settings, stack.admin_key) as (app, client):
        for _ in range(3):
            started = time.monotonic()
            down = await client.get("/api/v1/activity-types")
            assert down.status_code == 503 and down.headers["content-type"] == PROBLEM
            assert down.headers["retry-after"] == "1"
            assert time.monotonic() - started < 0.5
        assert (await client.get("/ready")).json()["circuits"]["activities"] == "open"
        assert (await client.get("/api/v1/organizations")).status_code == 200  # the registry is unaffected

        async with TinyUpstream(port) as revived:
            # Within the cooldown the gateway does not even try the service.
            refused = await client.get("/api/v1/activity-types")
            assert refused.status_code == 503 and "circuit open" in refused.json()["detail"]
            assert revived.requests == 0

            async def answered() -> bool:
                return (await client.get("/api/v1/activity-types")).status_code == 200

            await eventually(answered, timeout=5, what="the circuit closing after the cooldown")
        ready = (await client.get("/ready")).json()
    assert ready["circuits"]["activities"] == "closed"


@pytest.mark.dialect_free
async def test_only_idempotent_requests_are_retried_and_only_once(stack):
    port = free_port()
    async with TinyUpstream(port, drop=1) as flaky:  # closes the first connection without answering
        settings = settings_for(stack, analytics_url=f"http://127.0.0.1:{port}")
        async with running_gateway(settings, stack.admin_key) as (_, client):
            retried = await client.get("/api/v1/analytics/overview")
            assert retried.status_code == 200 and flaky.requests == 2  # dropped once, answered on the retry
            flaky.drop = 1
            not_retried = await client.post("/api/v1/analytics/overview", json={})
            assert not_retried.status_code == 503 and flaky.requests == 3  # a POST is never sent twice
            flaky.drop = 5
            bounded = await client.get("/api/v1/analytics/overview")
            assert bounded.status_code == 503 and flaky.requests == 5  # two attempts, no more


@pytest.mark.dialect_free
async def test_body_too_large_is_413_and_a_trickling_body_is_cut_off(stack):
    settings = settings_for(stack, body_read_timeout_seconds=0.3)
    async with running_gateway(settings, stack.admin_key) as (_, client):
        too_big = await client.post("/api/v1/organizations", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                                    headers={"content-type": "application/json"})
        assert too_big.status_code == 413 and too_big.headers["content-type"] == PROBLEM

        async def trickle():
            yield b'{"name": '
            await asyncio.sleep(2)  # the client's behaviour, not a wait: it trickles past the 0.3 s body limit
            yield b'"late", "kind": "ngo"}'

        started = time.monotonic()
        slow = await client.post("/api/v1/organizations", content=trickle(), headers={"content-type": "application/json"})
        assert slow.status_code == 408 and slow.headers["content-type"] == PROBLEM
        assert time.monotonic() - started < 1.5
