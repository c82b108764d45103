"""Platform faults through the real processes: broker down while writing, broker back empty, database away.

Asserted as what the consumers applied, exactly once: analytics (its DuckDB store) through its figures
and /metrics, the activities service's registry consumer also through the processed events of its SQL
database. The tests run on the fault stack (tests/conftest.py: a broker, databases, services and gateway
of its own, shared with test_broker_loss and test_rolling_restart only), so stopping its broker disturbs
no other test; each must leave it whole.
"""
from __future__ import annotations

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from shared.db import make_engine
from tests.api import walk
from tests.conftest import eventually
from tests.harness import (
    Stack, database_mode, needs_stoppable_broker, pg_server_url, unique,
)

pytestmark = needs_stoppable_broker

# The consumer that applies registry events to a SQL database (analytics applies them to its store).
REGISTRY_VIEW = "activities-registry"
WRITES = 20


# ---- helpers ----------------------------------------------------------------------------------
def organization_body() -> dict:
    return {"name": unique("ngo"), "kind": "ngo", "province_codes": ["12"]}


async def registry_count(admin: httpx.AsyncClient) -> int:
    return len(await walk(admin, "/organizations"))


async def analytics_count(admin: httpx.AsyncClient) -> int:
    return (await admin.get("/analytics/overview")).json()["organizations"]


async def metric(client: httpx.AsyncClient, sample: str, labels: dict[str, str]) -> float:
    """One sample of a service's /metrics (0 when the series does not exist yet)."""
    exposition = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def consumed(service: httpx.AsyncClient, outcome: str, consumer: str = "analytics") -> int:
    return int(await metric(service, "vmc_consumer_events_total", {"consumer": consumer, "outcome": outcome}))


async def query(url: str, sql: str, **params) -> list[tuple]:
    """Read a service's database directly (what the service itself recorded)."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(sql), params)]
    finally:
        await engine.dispose()


async def outbox_rows(stack: Stack, keys: list[str]) -> list[tuple[str, bool]]:
    """(event_id, published) of the registry's outbox rows for these aggregate ids."""
    rows = await query(stack.db_urls["registry"], "SELECT event_id, key, published_at IS NOT NULL FROM outbox")
    wanted = set(keys)
    return [(event_id, published) for event_id, key, published in rows if key in wanted]


async def processed_by_registry_view(stack: Stack) -> dict[str, list[str]]:
    """The outcomes the activities service recorded for each registry event it consumed."""
    rows = await query(
        stack.db_urls["activities"], "SELECT event_id, outcome FROM processed_events WHERE consumer = :consumer",
        consumer=REGISTRY_VIEW,
    )
    seen: dict[str, list[str]] = {}
    for event_id, outcome in rows:
        seen.setdefault(event_id, []).append(outcome)
    return seen


async def registry_view_has(stack: Stack, event_ids: list[str] | None = None, timeout: float = 30.0) -> None:
    """Wait until the activities service has recorded these registry events (default: all of the outbox)."""
    if event_ids is None:
        event_ids = [e for (e,) in await query(stack.db_urls["registry"], "SELECT event_id FROM outbox")]

    async def recorded() -> bool:
        processed = await processed_by_registry_view(stack)
        return all(e in processed for e in event_ids)

    await eventually(recorded, timeout, 0.2, what=f"{len(event_ids)} registry events recorded by {REGISTRY_VIEW}")


async def applied_since(service: httpx.AsyncClient, consumer: str, before: int, expected: int) -> int:
    """Events `consumer` applied since `before`, once at least `expected` (its metric is counted just
    after the batch's commit, so it may trail the processed-events record by a moment)."""
    async def reached() -> bool:
        return await consumed(service, "applied", consumer) - before >= expected

    await eventually(reached, 10, 0.1, what=f"{consumer} counting {expected} applied events")
    return await consumed(service, "applied", consumer) - before


async def readiness(client: httpx.AsyncClient) -> tuple[int, dict]:
    response = await client.get("/ready")
    return response.status_code, response.json()


async def caught_up(admin: httpx.AsyncClient, expected: int | None = None, timeout: float = 30.0) -> int:
    """Wait until analytics counts what the registry holds (or `expected`); returns the count."""
    target = expected if expected is not None else await registry_count(admin)

    async def check() -> bool:
        return await analytics_count(admin) == target

    await eventually(check, timeout, 0.2, what=f"analytics counting {target} organisations")
    return target


async def all_ready(direct: dict[str, httpx.AsyncClient]) -> bool:
    return all(status == 200 for status, _ in [await readiness(c) for c in direct.values()])


# ---- the broker stops while writes go on --------------------------------------------------------
async def test_writes_succeed_while_broker_is_down_and_every_event_reaches_analytics_exactly_once(
    fault_stack: Stack, fault_admin: httpx.AsyncClient, fault_direct: dict[str, httpx.AsyncClient]
):
    before = await caught_up(fault_admin)
    await registry_view_has(fault_stack)
    applied_before = await consumed(fault_direct["analytics"], "applied")
    view_applied_before = await consumed(fault_direct["activities"], "applied", REGISTRY_VIEW)

    fault_stack.broker.stop()
    try:
        async def all_report_broker_down() -> bool:
            states = [await readiness(c) for c in fault_direct.values()]
            return all(status == 503 and body["checks"] == {"database": True, "broker": False, "outbox": True, "consumers": True}
                       for status, body in states)

        await eventually(all_report_broker_down, 15, what="every service's /ready answering 503 for the broker")
        status, body = await readiness(fault_direct["registry"])
        assert body["detail"] == "not ready: broker unreachable"

        created = [await fault_admin.post("/organizations", json=organization_body()) for _ in range(WRITES)]
        assert [r.status_code for r in created] == [201] * WRITES, [r.text for r in created if r.status_code != 201]
        ids = [r.json()["id"] for r in created]
        held = await outbox_rows(fault_stack, ids)
        assert len(held) == WRITES and not any(published for _, published in held), "held in the outbox"
    finally:
        fault_stack.broker.start()  # memory storage: it comes back empty, without topics or offsets

    await caught_up(fault_admin, before + WRITES, timeout=60)
    assert await registry_count(fault_admin) == before + WRITES
    assert await consumed(fault_direct["analytics"], "applied") - applied_before == WRITES

    # Each event recorded as applied by the activities service's registry consumer, and applied once.
    event_ids = [event_id for event_id, _ in await outbox_rows(fault_stack, ids)]
    await registry_view_has(fault_stack, event_ids, timeout=60)
    processed = await processed_by_registry_view(fault_stack)
    assert [processed.get(e) for e in event_ids] == [["applied"]] * WRITES
    assert await applied_since(fault_direct["activities"], REGISTRY_VIEW, view_applied_before, WRITES) == WRITES
    await eventually(lambda: all_ready(fault_direct), 15, what="every /ready back to 200")


async def test_broker_restarted_empty_and_idle_is_noticed_and_the_outbox_republished_with_nothing_applied_twice(
    fault_stack: Stack, fault_admin: httpx.AsyncClient, fault_direct: dict[str, httpx.AsyncClient]
):
    """No write after the restart and no signal: the registry finds its partitions' logs end below
    the offsets the broker acknowledged before (their high watermarks), and re-publishes."""
    count = await caught_up(fault_admin)
    applied_before = await consumed(fault_direct["analytics"], "applied")
    duplicates_before = await consumed(fault_direct["analytics"], "duplicate")
    registry_db = fault_stack.db_urls["registry"]
    retained = (await query(registry_db, "SELECT count(*) FROM outbox"))[0][0]
    assert retained >= count

    fault_stack.broker.stop()
    fault_stack.broker.start()

    async def republished() -> bool:
        backlog = (await query(registry_db, "SELECT count(*) FROM outbox WHERE published_at IS NULL"))[0][0]
        seen = await consumed(fault_direct["analytics"], "duplicate") - duplicates_before
        # Redeliveries after a rebalance may count some twice: at least every retained row.
        return backlog == 0 and seen >= retained

    await eventually(republished, 60, 0.2, what=f"{retained} republished events seen by analytics")
    assert await consumed(fault_direct["analytics"], "applied") == applied_before
    assert await analytics_count(fault_admin) == count

    # The pipeline still runs on the new broker.
    new = await fault_admin.post("/organizations", json=organization_body())
    assert new.status_code == 201
    await caught_up(fault_admin, count + 1)
    assert await consumed(fault_direct["analytics"], "applied") == applied_before + 1
    await eventually(lambda: all_ready(fault_direct), 15, what="every /ready back to 200")


# ---- a service's database goes away -------------------------------------------------------------
async def set_connections(database: str, allowed: bool) -> None:
    conn = await asyncpg.connect(pg_server_url())
    try:
        await conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await conn.close()


def consumer_restarts(stack: Stack) -> int:
    """Times the activities service's consumer logged a restart after a database failure (its JSON log lines)."""
    lines = (stack.workdir / "activities.log").read_text(errors="replace").splitlines()
    return sum(1 for line in lines
               if "consumer failed, restarting" in line and REGISTRY_VIEW in line and "DBAPIError" in line)


@pytest.mark.skipif(database_mode() != "postgresql", reason="refusing connections to one database needs PostgreSQL")
async def test_a_consumers_database_outage_reports_not_ready_then_catches_up_without_dead_letters(
    fault_stack: Stack, fault_admin: httpx.AsyncClient, fault_direct: dict[str, httpx.AsyncClient]
):
    """The activities service's registry consumer loses its SQL database while registry events arrive."""
    activities = fault_direct["activities"]
    before = await caught_up(fault_admin)
    await registry_view_has(fault_stack)
    applied_before = await consumed(activities, "applied", REGISTRY_VIEW)
    dead_before = await metric(activities, "vmc_dead_letters_total", {"consumer": REGISTRY_VIEW})
    database = fault_stack.db_urls["activities"].rsplit("/", 1)[1]
    restarts_before = consumer_restarts(fault_stack)

    await set_connections(database, allowed=False)
    try:
        async def database_down() -> bool:
            status, body = await readiness(activities)
            return status == 503 and body["checks"] == {"database": False, "broker": True, "outbox": True, "consumers": True}

        await eventually(database_down, 15, what="activities /ready answering 503 for its database")
        created = [await fault_admin.post("/organizations", json=organization_body()) for _ in range(5)]
        assert [r.status_code for r in created] == [201] * 5
        # The registry's own database is fine: it stays ready.
        assert (await readiness(fault_direct["registry"]))[0] == 200
        # Keep the database away until the consumer has met the outage on these events.
        async def consumer_hit_outage() -> bool:
            return consumer_restarts(fault_stack) > restarts_before

        await eventually(consumer_hit_outage, 20, what=f"the {REGISTRY_VIEW} consumer failing on its database")
        # Analytics keeps its figures in its own store: another service's outage does not hold it up.
        await caught_up(fault_admin, before + 5)
    finally:
        await set_connections(database, allowed=True)

    await eventually(lambda: all_ready(fault_direct), 15, what="activities ready again")
    ids = [r.json()["id"] for r in created]
    event_ids = [event_id for event_id, _ in await outbox_rows(fault_stack, ids)]
    await registry_view_has(fault_stack, event_ids, timeout=45)
    processed = await processed_by_registry_view(fault_stack)
    assert [processed.get(e) for e in event_ids] == [["applied"]] * 5
    assert await applied_since(activities, REGISTRY_VIEW, applied_before, 5) == 5
    # An unreachable database is not the message's fault: nothing was dead-lettered.
    assert await metric(activities, "vmc_dead_letters_total", {"consumer": REGISTRY_VIEW}) == dead_before
