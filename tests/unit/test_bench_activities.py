"""bench.activities and bench.ceiling: valid entries that never meet on a volunteer-day, a ceiling that stores
what the service stores, the figures side by side, and body templates taken in turn by both load generators."""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import uuid
from datetime import date, timedelta
from types import SimpleNamespace

import orjson
import pytest
from aiohttp import web
from sqlalchemy import select

from bench import ceiling
from bench.activities import Setup, batch_item, single_items, single_templates, stored_rows
from bench.load import Load, LoadResult, body_templates, wrk_script
from bench.payloads import fill, registered_volunteers, volunteer_template
from bench.pyload import generate
from services.activities.activities.models import Activity, ActivityCreate, ActivityPublic
from services.activities.migrations import MIGRATIONS
from services.registry.normalize import normalize_name
from services.registry.volunteers.models import Volunteer
from shared.db import make_engine, make_sessionmaker
from shared.events import ACTIVITY_SUBMITTED, VOLUNTEER_REGISTERED
from shared.outbox import OutboxRecord
from tests.harness import Databases

TODAY = date(2026, 12, 2)


def setup_of(volunteers: int) -> Setup:
    return Setup("r1", TODAY, str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()),
                 [str(uuid.uuid4()) for _ in range(volunteers)])


def test_batch_items_are_valid_and_never_share_a_volunteer_day():
    setup = setup_of(50)
    items = [batch_item(setup, i) for i in range(5000)]
    parsed = [ActivityCreate.model_validate(item) for item in items]  # raises on an invalid one
    assert len({(d.volunteer_id, d.date) for d in parsed}) == len(items)
    assert all(setup.start <= d.date < TODAY for d in parsed)
    assert len({d.client_reference for d in parsed}) == len(items)
    assert {d.volunteer_id for d in parsed} == {uuid.UUID(v) for v in setup.volunteer_ids}


def test_single_submissions_take_the_volunteers_in_turn_on_one_day_far_below_24_hours():
    setup = setup_of(7)
    templates = single_templates(setup)
    assert len(templates) == 7 and all("{n}" in t for t in templates)
    items = single_items(setup, 1_000_000, 70)
    parsed = [ActivityCreate.model_validate(item) for item in items]
    # request n goes to template n mod 7, as both load generators take them
    assert [str(d.volunteer_id) for d in parsed] == [setup.volunteer_ids[n % 7] for n in range(1_000_001, 1_000_071)]
    assert items[0] == orjson.loads(fill(templates[1_000_001 % 7], 1_000_001))
    assert len({d.client_reference for d in parsed}) == 70
    assert {d.date for d in parsed} == {TODAY - timedelta(days=200)}
    assert setup.start <= TODAY - timedelta(days=200)
    # 96 requests per volunteer before a day would pass 24 hours: far more than a run sends per volunteer
    assert parsed[0].hours * 96 <= 24


def test_stored_rows_are_whole_activity_rows_with_their_submitted_events():
    setup = setup_of(3)
    rows, events = stored_rows(setup, [batch_item(setup, i) for i in range(4)])
    assert all(set(row) == {c.name for c in Activity.__table__.columns} for row in rows)
    assert [e.type for e in events] == [ACTIVITY_SUBMITTED] * 4
    assert [e.subject for e in events] == [str(row["id"]) for row in rows]
    assert rows[0]["status"] == "submitted" and rows[0]["version"] == 1 and rows[0]["focus_area"] == "climate_change"


@pytest.fixture
def sqlite_ceiling(tmp_path):
    """A fresh SQLite database with the activities service's migrations, made as the benchmark makes it."""
    return ceiling.fresh_database(SimpleNamespace(databases=Databases(tmp_path, "sqlite")), "ceiling", MIGRATIONS)


def read_back(url: str) -> tuple[list[ActivityPublic], int]:
    async def run():
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                rows = (await session.execute(select(Activity).order_by(Activity.client_reference))).scalars()
                public = [ActivityPublic.of(row) for row in rows]
                outbox = len((await session.execute(select(OutboxRecord))).all())
            return public, outbox
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_the_sqlite_ceiling_stores_rows_the_service_reads_back_as_it_wrote_them(sqlite_ceiling):
    setup = setup_of(5)
    rows, events = stored_rows(setup, [batch_item(setup, i) for i in range(25)])
    seconds = ceiling.bulk(sqlite_ceiling, Activity.__table__, rows, events, batch=10)
    assert len(seconds) == 3  # 10, 10 and 5 rows, a transaction each
    more, more_events = stored_rows(setup, single_items(setup, 0, 40))
    result = ceiling.singles(sqlite_ceiling, Activity.__table__, more, more_events, tasks=4, seconds=30)
    assert result.requests == 40  # the rows ran out long before the time
    public, outbox = read_back(sqlite_ceiling)
    assert outbox == 65
    assert public[:25] == [ActivityPublic.of(row) for row in sorted(rows, key=lambda r: r["client_reference"])]


def test_driver_values_are_what_sqlalchemy_hands_the_driver_and_leave_out_the_sequence():
    from sqlalchemy.dialects.sqlite.aiosqlite import dialect

    setup = setup_of(1)
    rows, events = stored_rows(setup, [batch_item(setup, 0)])
    columns, [record] = ceiling.driver_values(Activity.__table__, rows, dialect())
    values = dict(zip(columns, record))
    assert values["id"] == rows[0]["id"].hex and values["project_focus_areas"] == '["climate_change", "environment", "digital_literacy"]'
    # SQLite's own text forms; the time in UTC without an offset, as UTCDateTime stores it
    assert values["date"] == rows[0]["date"].isoformat()
    assert values["created_at"] == rows[0]["created_at"].replace(tzinfo=None).isoformat(" ")
    outbox_columns, _ = ceiling.driver_values(OutboxRecord.__table__, [ceiling.outbox_row(events[0], rows[0]["created_at"])], dialect())
    assert "seq" not in outbox_columns and "published_at" not in outbox_columns


def test_side_by_side_puts_the_ceiling_below_with_the_ratio_and_the_target():
    measured, raw = LoadResult(300, 1.0, 0, 100.0, 200.0), LoadResult(1000, 1.0, 0, 10.0, 20.0)
    figures = ceiling.side_by_side("postgresql: single submissions", "per second", measured, 3500.0, raw, 3600.0,
                                   "raw asyncpg", target=0.35)
    assert figures == {
        "postgresql: single submissions | per second": 300, "postgresql: single submissions | p50 ms": 100.0,
        "postgresql: single submissions | p99 ms": 200.0, "postgresql: single submissions | cpu probe µs": 3500.0,
        "postgresql: single submissions | ÷ ceiling": 0.3, "postgresql: single submissions | target": "≥ 0.35",
        "postgresql: single submissions | met": "no: 86% of it",
        "postgresql: single submissions: ceiling, raw asyncpg | per second": 1000,
        "postgresql: single submissions: ceiling, raw asyncpg | p50 ms": 10.0,
        "postgresql: single submissions: ceiling, raw asyncpg | p99 ms": 20.0,
        "postgresql: single submissions: ceiling, raw asyncpg | cpu probe µs": 3600.0,
    }
    plain = ceiling.side_by_side("sqlite", "rows/s", measured, 1.0, raw, 2.0, "sqlite3 executemany", latencies=False)
    assert "sqlite | target" not in plain and "sqlite | p50 ms" not in plain and plain["sqlite | ÷ ceiling"] == 0.3


def test_batch_result_is_rows_per_second_and_the_batch_percentiles():
    result = ceiling.batch_result(3000, [0.5, 1.0, 1.5])
    assert (result.rps, result.p50_ms, result.p99_ms) == (1000.0, 1000.0, pytest.approx(1490.0))
    assert ceiling.method("sqlite+aiosqlite:///x.db", bulk=True) == "sqlite3 executemany"
    assert ceiling.method("postgresql+asyncpg://h/db", bulk=False) == "raw asyncpg"


# ---- body templates taken in turn ---------------------------------------------------------------

def test_a_list_of_templates_becomes_a_lua_table_indexed_by_the_request_number():
    assert body_templates(None) == [] and body_templates("a") == ["a"] and body_templates(["a", "b"]) == ["a", "b"]
    script = wrk_script(Load("http://h/x", 2, 1, "POST", {}, ['{"v": 1, "r": "{n}"}', '{"v": 2}'], 10))
    assert 'local templates = { [==[{"v": 1, "r": "{n}"}]==], [==[{"v": 2}]==] }' in script
    assert "templates[counter % #templates + 1]" in script
    # one template without a number is sent as it is, with no per-request function
    assert "request = function()" not in wrk_script(Load("http://h/x", 1, 1, "POST", {}, ['{"v": 1}']))


async def bodies_received(send) -> list[bytes]:
    """Starts a server recording each request's body, runs `send(url)`, returns the bodies in arrival order."""
    received: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/x", record)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        await send(f"http://127.0.0.1:{port}/x")
    finally:
        await runner.cleanup()
    return received


def in_turn(received: list[bytes]) -> None:
    assert received
    for body in received:
        n = int(orjson.loads(body)["r"])
        assert orjson.loads(body)["v"] == n % 3


TEMPLATES = [f'{{"v": {k}, "r": "{{n}}"}}' for k in range(3)]


async def test_the_python_generator_takes_the_templates_in_turn():
    async def send(url: str) -> None:
        result = await generate({"url": url, "connections": 1, "seconds": 0.3, "method": "POST", "headers": {},
                                 "body": TEMPLATES, "first": 5})
        assert result["failures"] == 0

    received = await bodies_received(send)
    in_turn(received)
    assert orjson.loads(received[0])["r"] == "00000006"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
async def test_wrk_takes_the_templates_in_turn(tmp_path):
    script = tmp_path / "load.lua"
    script.write_text(wrk_script(Load("", 1, 1, "POST", {}, TEMPLATES, 5)))

    async def send(url: str) -> None:
        proc = await asyncio.create_subprocess_exec("wrk", "-t1", "-c1", "-d1s", "-s", str(script), url,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err

    in_turn(await bodies_received(send))


def test_registered_volunteers_are_the_rows_of_the_registration_bodies_sent_with_the_same_numbers():
    rows, events = registered_volunteers("r1", 2_000_000, 3)
    bodies = [orjson.loads(fill(volunteer_template("r1"), n)) for n in (2_000_001, 2_000_002, 2_000_003)]
    assert all(set(row) == {c.name for c in Volunteer.__table__.columns} for row in rows)
    assert [row["phone"] for row in rows] == [body["phone"] for body in bodies]
    assert rows[0]["name_latin_key"] == normalize_name(bodies[0]["name_latin"]) and rows[0]["consent_given"] is True
    assert [e.type for e in events] == [VOLUNTEER_REGISTERED] * 3 and events[0].subject == str(rows[0]["id"])
