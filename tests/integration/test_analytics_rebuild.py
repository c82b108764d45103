"""Rebuilding the analytics store from the log gives the store the live consumer built: offline into a
file of its own, and inside the running service, swapped in while events keep arriving."""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import orjson

from services.analytics.rebuild import ACTIVITY_MARK, Batch, bulk_writer, describe, finish, rebuild_offline
from services.analytics.store import MEMORY, AnalyticsStore
from shared.events import ACTIVITY_VOIDED
from tests.conftest import eventually
from tests.harness import Stack
from tests.integration.activity_factories import activity_body, log, setting
from tests.integration.analytics_events import (
    OwnTopics, apply_in_order, make_topics, organisation_hours, processed, programme_history, publish, records_of, settings_for, shuffled_with_duplicates,
    store_consumer,
)

ROOT = Path(__file__).resolve().parents[2]


async def test_an_offline_rebuild_gives_the_live_store(broker, tmp_path):
    topics = OwnTopics()
    settings = settings_for(broker.bootstrap, store_path=str(tmp_path / "analytics.duckdb"))
    await make_topics(settings, topics)
    history = programme_history()
    # Two activity events the models refuse (a negative count of people reached, an unknown status):
    # the live consumer dead-letters them, the rebuild's bulk path must refuse them too.
    voided = next(e for e in history.events if e.type == ACTIVITY_VOIDED)
    poison = [(topics.activities, b"k", _broken(voided, path, value))
              for path, value in ((("beneficiaries", "female"), -1), (("status",), "lost"))]
    records = records_of(topics, shuffled_with_duplicates(history.events, 7, 5), random.Random(7))
    await publish(settings, topics, [*records[:4], *poison, (topics.activities, b"k", b"{not json"), *records[4:]])
    live = AnalyticsStore(MEMORY)
    consumer, _ = store_consumer(settings, topics, live)
    consumer.start()
    try:
        await eventually(lambda: processed(live, topics.consumer).get("applied") == len(history.events), 30,
                         what="the live consumer applying the log")
    finally:
        await consumer.stop()

    shown: list[str] = []
    progress = await rebuild_offline(settings, lambda p: shown.append(describe(p.as_dict())), topics=topics.both)
    assert progress.state == "done" and progress.events == len(history.events) + 5 + 3
    assert progress.skipped == 3
    assert sum(progress.ends.values()) == len(history.events) + 5 + 3
    rebuilt = AnalyticsStore(settings.resolved_store_path())
    try:
        assert rebuilt.contents() == live.contents()
        # The rebuild records where it stopped in each partition (the service's consumer group starts
        # there) rather than every event id; the refused events with an id are recorded as dead
        # letters, as the live consumer records them.
        assert processed(rebuilt, "analytics")["dead_letter"] == 2
        assert rebuilt.query("SELECT sum(next_offset) FROM consumed_offsets")[0][0] == sum(progress.ends.values())
        assert processed(live, topics.consumer) == {"applied": len(history.events), "dead_letter": 2}
    finally:
        rebuilt.close()
        live.close()


async def test_activities_read_both_ways_keep_their_highest_revision():
    """An activity event in the catalogue's serialisation takes the bulk path (kept aside, stored at the
    end); one serialised otherwise (here indented) takes the models' path and is stored at once. The
    same activity's revisions read both ways, in any order and batch, end at its highest, as the live
    consumer's do."""
    history = programme_history()
    activities = [e for e in history.events if e.type.startswith("vmc.activity.")]
    revisions = {}
    for event in activities:
        revisions.setdefault(event.data["id"], set()).add(event.data["revision"])
    assert any(len(r) >= 3 for r in revisions.values())  # corrected, then verified or voided
    expected = await apply_in_order(history.events)
    for seed in range(3):
        store = AnalyticsStore(MEMORY)
        write, batch = bulk_writer(store), Batch()
        for n, event in enumerate(shuffled_with_duplicates(history.events, seed, 5)):
            raw = event.to_bytes()
            if event in activities and (event.data["revision"] + seed) % 2:
                raw = orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2)
                assert ACTIVITY_MARK not in raw
            batch.add(raw)
            if n % 4 == 3:
                write(batch)
                batch = Batch()
        write(batch)
        await finish(store)
        try:
            assert store.contents() == expected.contents(), f"seed {seed}"
        finally:
            store.close()
    expected.close()


def test_the_rebuild_command_refuses_a_store_a_running_service_holds(stack: Stack):
    result = subprocess.run(
        [sys.executable, "-m", "services.analytics.rebuild"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, **stack.env()},
    )
    assert result.returncode == 1
    assert "open in a running analytics service" in result.stderr


def _broken(event, path: tuple[str, ...], value) -> bytes:
    """`event` (an activity's) under a new id, with the payload field at `path` set to `value`."""
    envelope = orjson.loads(event.to_bytes())
    envelope["id"] = str(uuid.uuid4())
    target = envelope["data"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return orjson.dumps(envelope)


async def figures_through_the_gateway(admin: httpx.AsyncClient) -> dict:
    """What users read: the overview, and hours per province and month with every status."""
    overview = await admin.get("/analytics/overview")
    hours = await admin.get("/analytics/hours", params={"group_by": "province,month", "status": "all"})
    assert overview.status_code == 200
    return {"overview": overview.json(), "hours": (hours.status_code, hours.json())}


async def test_a_rebuild_inside_the_running_service_swaps_in_the_same_figures(stack: Stack, admin: httpx.AsyncClient):
    place = await setting(admin)

    async def hours_become(expected: float, timeout: float = 20) -> None:
        async def reached() -> bool:
            return await organisation_hours(admin, place.org["id"], status="all") == expected
        await eventually(reached, timeout, what=f"the organisation's hours reaching {expected}")

    logged = await log(admin, activity_body(place, hours=3.0))
    assert logged.status_code == 201, logged.text
    verified = await admin.post(f"/activities/{logged.json()['id']}/verify", json={"approved_hours": 2.0})
    assert verified.status_code == 200, verified.text
    await hours_become(2.0)
    before = await figures_through_the_gateway(admin)
    assert before["hours"][0] == 200 and before["hours"][1]["rows"], before

    command = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.analytics.rebuild", "--url", stack.urls["analytics"], cwd=ROOT,
        env={**os.environ, **stack.env()}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(command.communicate(), 120)
    assert command.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[-1].startswith("done: ") and "events/s" in lines[-1], lines
    assert await figures_through_the_gateway(admin) == before
    assert (Path(stack.workdir) / "analytics.duckdb.current").exists()

    # The swapped-in store goes on taking events, and a restarted service opens it.
    assert (await log(admin, activity_body(place, hours=1.5))).status_code == 201
    await hours_become(3.5)
    after = await figures_through_the_gateway(admin)
    await asyncio.to_thread(stack.restart_part, "analytics")
    await eventually(lambda: _ready(stack), 60, what="analytics ready after its restart")
    assert await figures_through_the_gateway(admin) == after
    # Consuming again before the next test (a restarted member waits for the old one's session to end).
    assert (await log(admin, activity_body(place, hours=1.0))).status_code == 201
    await hours_become(4.5, timeout=60)


async def _ready(stack: Stack) -> bool:
    async with httpx.AsyncClient(base_url=stack.urls["analytics"], timeout=10) as client:
        try:
            return (await client.get("/ready")).status_code == 200
        except httpx.HTTPError:
            return False
