"""The broker lost: killed and started again empty on the same port under writes, or frozen and back
with its log. No launcher signal: each service notices by itself (shared/broker.py LogWatch).

Counted on the consumers' side: every organisation written through the gateway is on the registry
topic (its event id at least once), recorded once as applied by the activities service's registry
consumer, and counted once by analytics. The module runs a stack of its own, so stopping its broker
disturbs no other test.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from shared.events import REGISTRY_TOPIC
from tests.conftest import eventually
from tests.harness import Stack, needs_stoppable_broker, stack_of_its_own, unique
from tests.integration.test_platform_faults import (
    REGISTRY_VIEW, analytics_count, consumed, processed_by_registry_view, query, readiness, registry_count,
)

pytestmark = needs_stoppable_broker

SERVICE_NAMES = ("registry", "activities", "analytics")
LOST = "the broker lost its log: republishing retained outbox"


@pytest.fixture(scope="module")
def loss_stack():
    # Consumers rejoin quickly after the broker comes back (on Tansu a join waits ~half of it).
    with stack_of_its_own(VMC_KAFKA_SESSION_TIMEOUT_MS="4000") as stack:
        yield stack


@pytest.fixture
async def admin(loss_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=loss_stack.api, headers={"Authorization": f"Bearer {loss_stack.admin_key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def direct(loss_stack: Stack) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    clients = {name: httpx.AsyncClient(base_url=loss_stack.urls[name], timeout=30) for name in SERVICE_NAMES}
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


class Writer:
    """A partner registering organisations one after another; keeps the ids the gateway acknowledged."""

    def __init__(self, admin: httpx.AsyncClient):
        self.admin = admin
        self.ids: list[str] = []

    async def write(self) -> str:
        answer = await self.admin.post("/organizations", json={"name": unique("ngo"), "kind": "ngo", "province_codes": ["12"]})
        assert answer.status_code == 201, answer.text
        self.ids.append(answer.json()["id"])
        return self.ids[-1]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.write()
            await asyncio.sleep(0.02)  # a partner's pace, not a condition waited for

    async def more(self, count: int, timeout: float = 30.0) -> None:
        target = len(self.ids) + count
        await eventually(lambda: len(self.ids) >= target, timeout, what=f"{target} organisations acknowledged")


async def event_ids(stack: Stack, organization_ids: list[str]) -> dict[str, str]:
    """organisation id -> the event id of its registration (the registry's outbox row)."""
    rows = await query(stack.db_urls["registry"], "SELECT key, event_id FROM outbox")
    wanted = set(organization_ids)
    return {key: event_id for key, event_id in rows if key in wanted}


async def topic_event_ids(stack: Stack, expected: set[str], timeout: float = 30.0) -> tuple[set[str], set[int]]:
    """The event ids on the registry topic (read from the start until `expected` are all there), and
    the topic's partitions."""
    reader = AIOKafkaConsumer(REGISTRY_TOPIC, bootstrap_servers=stack.broker.bootstrap, group_id=None,
                              auto_offset_reset="earliest", enable_auto_commit=False)
    await reader.start()
    seen: set[str] = set()
    try:
        async def all_there() -> bool:
            for batch in (await reader.getmany(timeout_ms=200)).values():
                seen.update(orjson.loads(m.value)["id"] for m in batch)
            return expected <= seen

        await eventually(all_there, timeout, what=f"{len(expected)} events on {REGISTRY_TOPIC}")
        return seen, reader.partitions_for_topic(REGISTRY_TOPIC) or set()
    finally:
        await reader.stop()


async def recorded_once(stack: Stack, events: list[str], timeout: float = 60.0) -> None:
    """Each event recorded by the activities service's registry consumer, once, as applied."""
    async def all_recorded() -> bool:
        processed = await processed_by_registry_view(stack)
        return all(e in processed for e in events)

    await eventually(all_recorded, timeout, 0.2, what=f"{len(events)} events recorded by {REGISTRY_VIEW}")
    processed = await processed_by_registry_view(stack)
    assert [processed[e] for e in events] == [["applied"]] * len(events)


def lost_log_lines(stack: Stack, service: str) -> int:
    return (stack.workdir / f"{service}.log").read_text(errors="replace").count(LOST)


async def all_ready(direct: dict[str, httpx.AsyncClient]) -> bool:
    return all(status == 200 for status, _ in [await readiness(c) for c in direct.values()])


async def test_broker_killed_and_back_empty_under_writes_every_event_is_on_the_topic_and_applied_once(
    loss_stack: Stack, admin: httpx.AsyncClient, direct: dict[str, httpx.AsyncClient]
):
    await eventually(lambda: all_ready(direct), 30, what="every service ready")

    async def analytics_settled() -> bool:  # its consumer has joined its group and read the registry's log
        return await analytics_count(admin) == await registry_count(admin)

    # A broker killed while a consumer is still joining its group is a case of its own, not covered
    # here (issue 18's closing note: aiokafka's coordinator then stays silent).
    await eventually(analytics_settled, 30, what="analytics counting the registry's organisations")
    analytics_before = await analytics_count(admin)
    lost_before = lost_log_lines(loss_stack, "registry")
    writer, stop = Writer(admin), asyncio.Event()
    writing = asyncio.create_task(writer.run(stop))
    try:
        await writer.more(5)
        loss_stack.broker.stop(kill=True)

        async def every_service_says_why() -> bool:
            answers = [await readiness(c) for c in direct.values()]
            return all(status == 503 and body["detail"] == "not ready: broker unreachable" for status, body in answers)

        await eventually(every_service_says_why, 15, what="every /ready answering 503: broker unreachable")
        await writer.more(5)  # writes go on: their events wait in the outbox
        loss_stack.broker.start()  # memory storage: empty, the same port and cluster id
        back = time.monotonic()
        first_after = await writer.write()
        await writer.more(10)
    finally:
        stop.set()
        await writing

    # A write made right after the broker's return is published and applied within seconds (0.6-4 s
    # measured; a re-publication sent before its topic existed again took 18 s, the next deep look).
    first_event = (await event_ids(loss_stack, [first_after]))[first_after]
    await recorded_once(loss_stack, [first_event], timeout=max(1.0, 15 - (time.monotonic() - back)))
    print(f"\nfirst write after the broker's return applied by {REGISTRY_VIEW} {time.monotonic() - back:.1f} s after it")

    written = await event_ids(loss_stack, writer.ids)
    assert len(written) == len(writer.ids)
    on_topic, partitions = await topic_event_ids(loss_stack, set(written.values()))
    assert set(written.values()) <= on_topic
    assert partitions == {0, 1, 2}, "the topic came back with the service's partition count, not Tansu's 4"
    await recorded_once(loss_stack, list(written.values()))

    async def analytics_caught_up() -> bool:
        return await analytics_count(admin) == analytics_before + len(writer.ids)

    await eventually(analytics_caught_up, 30, 0.2, what="analytics counting every organisation once")
    assert await analytics_count(admin) == await registry_count(admin)
    assert lost_log_lines(loss_stack, "registry") > lost_before, "the registry noticed the lost log by itself"
    await eventually(lambda: all_ready(direct), 30, what="every /ready back to 200")


async def test_broker_frozen_then_back_with_its_log_republishes_nothing_and_applies_nothing_twice(
    loss_stack: Stack, admin: httpx.AsyncClient, direct: dict[str, httpx.AsyncClient]
):
    await eventually(lambda: all_ready(direct), 60, what="every service ready")
    lost_before = {name: lost_log_lines(loss_stack, name) for name in SERVICE_NAMES}
    applied_before = await consumed(direct["activities"], "applied", REGISTRY_VIEW)
    writer = Writer(admin)
    loss_stack.broker.pause()
    try:
        async def registry_says_why() -> bool:
            status, body = await readiness(direct["registry"])
            return status == 503 and body["detail"] == "not ready: broker unreachable"

        await eventually(registry_says_why, 15, what="registry /ready answering 503: broker unreachable")
        for _ in range(5):
            await writer.write()
    finally:
        loss_stack.broker.resume()
    await writer.write()

    written = await event_ids(loss_stack, writer.ids)
    await recorded_once(loss_stack, list(written.values()))

    async def counted() -> bool:
        return await consumed(direct["activities"], "applied", REGISTRY_VIEW) - applied_before >= 6

    await eventually(counted, 10, what="6 applied events counted")
    assert await consumed(direct["activities"], "applied", REGISTRY_VIEW) - applied_before == 6
    assert {name: lost_log_lines(loss_stack, name) for name in SERVICE_NAMES} == lost_before, "nothing re-published"
    await eventually(lambda: all_ready(direct), 30, what="every /ready back to 200")
