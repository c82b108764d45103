"""The broker lost: killed and started again empty on the same port under writes, or frozen and back
with its log. No launcher signal: each service notices by itself (shared/broker.py LogWatch).

Counted on the consumers' side: every organisation written through the gateway is on the registry
topic (its event id at least once), recorded once as applied by the activities service's registry
consumer, and counted once by analytics. The tests run on the fault stack
(tests/conftest.py, shared with test_platform_faults and test_rolling_restart only), so stopping its
broker disturbs no other test; each must leave it whole.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text

from shared.db import make_engine
from shared.events import REGISTRY_TOPIC
from shared.outbox import REPUBLISHING
from tests.conftest import eventually
from tests.harness import SERVICES, Stack, needs_stoppable_broker, unique
from tests.integration.test_platform_faults import (
    REGISTRY_VIEW, analytics_count, consumed, metric, processed_by_registry_view, query, readiness, registry_count,
)

pytestmark = needs_stoppable_broker

LOST = "the broker lost its log: republishing retained outbox"


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
    fault_stack: Stack, fault_admin: httpx.AsyncClient, fault_direct: dict[str, httpx.AsyncClient]
):
    await eventually(lambda: all_ready(fault_direct), 30, what="every service ready")
    # Analytics may still be joining its group (its /ready does not wait for that): counted against the
    # registry, not against what analytics counted before the kill.
    registry_before = await registry_count(fault_admin)
    lost_before = lost_log_lines(fault_stack, "registry")
    writer, stop = Writer(fault_admin), asyncio.Event()
    writing = asyncio.create_task(writer.run(stop))
    try:
        await writer.more(5)
        fault_stack.broker.stop(kill=True)

        async def every_service_says_why() -> bool:
            answers = [await readiness(c) for c in fault_direct.values()]
            return all(status == 503 and body["detail"] == "not ready: broker unreachable" for status, body in answers)

        await eventually(every_service_says_why, 15, what="every /ready answering 503: broker unreachable")
        await writer.more(5)  # writes go on: their events wait in the outbox
        fault_stack.broker.start()  # memory storage: empty, the same port and cluster id
        back = time.monotonic()
        first_after = await writer.write()
        await writer.more(10)
    finally:
        stop.set()
        await writing

    # A write made right after the broker's return is published and applied within seconds (0.6-4 s
    # measured; a re-publication sent before its topic existed again took 18 s, the next deep look).
    first_event = (await event_ids(fault_stack, [first_after]))[first_after]
    await recorded_once(fault_stack, [first_event], timeout=max(1.0, 15 - (time.monotonic() - back)))
    print(f"\nfirst write after the broker's return applied by {REGISTRY_VIEW} {time.monotonic() - back:.1f} s after it")

    written = await event_ids(fault_stack, writer.ids)
    assert len(written) == len(writer.ids)
    on_topic, partitions = await topic_event_ids(fault_stack, set(written.values()))
    assert set(written.values()) <= on_topic
    assert partitions == {0, 1, 2}, "the topic came back with the service's partition count, not Tansu's 4"
    await recorded_once(fault_stack, list(written.values()))

    async def analytics_caught_up() -> bool:
        return await analytics_count(fault_admin) == registry_before + len(writer.ids)

    await eventually(analytics_caught_up, 30, 0.2, what="analytics counting every organisation once")
    assert await registry_count(fault_admin) == registry_before + len(writer.ids)
    assert lost_log_lines(fault_stack, "registry") > lost_before, "the registry noticed the lost log by itself"
    await eventually(lambda: all_ready(fault_direct), 30, what="every /ready back to 200")


async def test_broker_frozen_then_back_with_its_log_republishes_nothing_and_applies_nothing_twice(
    fault_stack: Stack, fault_admin: httpx.AsyncClient, fault_direct: dict[str, httpx.AsyncClient]
):
    await eventually(lambda: all_ready(fault_direct), 60, what="every service ready")
    lost_before = {name: lost_log_lines(fault_stack, name) for name in SERVICES}
    applied_before = await consumed(fault_direct["activities"], "applied", REGISTRY_VIEW)
    writer = Writer(fault_admin)
    fault_stack.broker.pause()
    try:
        async def registry_says_why() -> bool:
            status, body = await readiness(fault_direct["registry"])
            return status == 503 and body["detail"] == "not ready: broker unreachable"

        await eventually(registry_says_why, 15, what="registry /ready answering 503: broker unreachable")
        for _ in range(5):
            await writer.write()
    finally:
        fault_stack.broker.resume()
    await writer.write()

    written = await event_ids(fault_stack, writer.ids)
    await recorded_once(fault_stack, list(written.values()))

    async def counted() -> bool:
        return await consumed(fault_direct["activities"], "applied", REGISTRY_VIEW) - applied_before >= 6

    await eventually(counted, 10, what="6 applied events counted")
    assert await consumed(fault_direct["activities"], "applied", REGISTRY_VIEW) - applied_before == 6
    assert {name: lost_log_lines(fault_stack, name) for name in SERVICES} == lost_before, "nothing re-published"
    await eventually(lambda: all_ready(fault_direct), 30, what="every /ready back to 200")


async def analytics_consumer(direct: dict[str, httpx.AsyncClient]) -> dict:
    """What analytics' /ready says of its consumer (lag, seconds without an assignment, ...)."""
    return (await direct["analytics"].get("/ready")).json()["consumers"]["analytics"]


async def test_broker_killed_while_a_consumer_joins_its_group_the_consumer_still_catches_up(
    fault_stack: Stack, fault_admin: httpx.AsyncClient, fault_direct: dict[str, httpx.AsyncClient]
):
    """The broker dies a moment after analytics subscribed, before its group assigned it anything, and
    comes back empty: the consumer gets its partitions and counts what is written after."""
    await eventually(lambda: all_ready(fault_direct), 60, what="every service ready")
    fault_stack.stop_part("analytics")
    fault_stack.start_part("analytics")
    fault_stack.wait_ready("analytics", "/ready", 60)

    async def joining() -> bool:
        return (await analytics_consumer(fault_direct))["unassigned_s"] > 0

    await eventually(joining, 5, 0.02, what="analytics' consumer joining its group")
    fault_stack.broker.stop(kill=True)
    try:
        async def analytics_says_why() -> bool:
            status, body = await readiness(fault_direct["analytics"])
            return status == 503 and body["detail"] == "not ready: broker unreachable"

        await eventually(analytics_says_why, 15, what="analytics /ready answering 503: broker unreachable")
    finally:
        fault_stack.broker.start()  # memory storage: empty
    organization = await Writer(fault_admin).write()

    async def counted() -> bool:
        return await analytics_count(fault_admin) == await registry_count(fault_admin)

    await eventually(counted, 60, 0.5, what=f"analytics counting {organization}, written after the broker's return")
    assert (await analytics_consumer(fault_direct))["unassigned_s"] == 0
    await eventually(lambda: all_ready(fault_direct), 30, what="every /ready back to 200")


async def test_ready_says_503_while_a_large_retained_outbox_is_republished_and_counts_the_rows(
    fault_stack: Stack, fault_admin: httpx.AsyncClient, fault_direct: dict[str, httpx.AsyncClient]
):
    """Thousands of retained (published) rows, copies of real events: after the broker came back empty
    the registry's /ready answers 503 naming the re-publication until it is done, /metrics counts the
    rows, and the consumers skip every copy (nothing counted twice)."""
    await eventually(lambda: all_ready(fault_direct), 60, what="every service ready")
    await Writer(fault_admin).write()
    await eventually(lambda: counted_alike(fault_admin), 30, what="analytics counting the registry's organisations")
    organizations = await registry_count(fault_admin)
    # The copies are removed after, so the next broker restart on the fault stack re-publishes only real rows.
    async with published_copies(fault_stack, REPUBLISHED_ROWS):
        retained = (await query(fault_stack.db_urls["registry"], "SELECT count(*) FROM outbox"))[0][0]
        republished_before = await metric(fault_direct["registry"], "vmc_outbox_republished_total", {"service": "registry"})

        fault_stack.broker.stop()
        fault_stack.broker.start()  # memory storage: empty; the registry finds out by itself

        async def says_republishing() -> bool:
            status, body = await readiness(fault_direct["registry"])
            return status == 503 and REPUBLISHING in body["detail"] and body["checks"]["outbox"] is False

        await eventually(says_republishing, 30, 0.02, what=f"registry /ready answering 503: {REPUBLISHING}")
        await eventually(lambda: all_ready(fault_direct), 120, 0.2, what="every /ready back to 200 once re-published")
        assert (await query(fault_stack.db_urls["registry"], "SELECT count(*) FROM outbox WHERE published_at IS NULL"))[0][0] == 0
        republished = await metric(fault_direct["registry"], "vmc_outbox_republished_total", {"service": "registry"})
        assert republished - republished_before == retained
        await eventually(lambda: counted_alike(fault_admin), 30, what="analytics counting the registry's organisations")
        assert await analytics_count(fault_admin) == organizations, "no copy counted twice"


REPUBLISHED_ROWS = 10_000


async def counted_alike(admin: httpx.AsyncClient) -> bool:
    return await analytics_count(admin) == await registry_count(admin)


@asynccontextmanager
async def published_copies(stack: Stack, rows: int) -> AsyncIterator[None]:
    """At least `rows` published outbox rows in the registry, copies of its real ones (same event ids:
    a consumer skips each copy it meets); the copies deleted after (as the outbox's pruning would)."""
    engine = make_engine(stack.db_urls["registry"])
    try:
        async with engine.begin() as conn:
            last = (await conn.execute(text("SELECT max(seq) FROM outbox"))).scalar_one()
            while (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one() < rows:
                await conn.execute(text(
                    "INSERT INTO outbox (event_id, topic, key, value, created_at, published_at) "
                    "SELECT event_id, topic, key, value, created_at, published_at FROM outbox"
                ))
        try:
            yield
        finally:
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM outbox WHERE seq > :last"), {"last": last})
    finally:
        await engine.dispose()
