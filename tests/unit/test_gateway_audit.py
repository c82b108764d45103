"""Which proxied requests the audit trail records, and as what (never the personal data itself)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from gateway.audit import AuditWriter, classify, copy_dsn, entry
from gateway.migrations import MIGRATIONS
from shared.caller import CallerContext
from shared.db import make_engine, make_sessionmaker, migrate
from shared.logs import request_id_var
from tests.conftest import eventually
from tests.harness import Databases, database_mode

VID = "0b6f7a8e-2f7e-4c55-9a39-6f2f1a0f4b11"


def scope(accept: bytes = b"application/json") -> dict:
    return {"headers": [(b"accept", accept)]}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/v1/volunteers", ("volunteer.list", "volunteers")),
        ("POST", "/api/v1/volunteers", ("volunteer.create", "volunteers")),
        ("GET", f"/api/v1/volunteers/{VID}", ("volunteer.read", f"volunteers/{VID}")),
        ("PATCH", f"/api/v1/volunteers/{VID}", ("volunteer.update", f"volunteers/{VID}")),
        ("DELETE", f"/api/v1/volunteers/{VID}", ("volunteer.erase", f"volunteers/{VID}")),
        ("POST", f"/api/v1/volunteers/{VID}/merge", ("volunteer.merge", f"volunteers/{VID}")),
        ("GET", "/api/v1/volunteers/duplicates", ("volunteer.duplicates", "volunteers/duplicates")),
        ("POST", "/api/v1/volunteers/import", ("volunteer.import", "volunteers/import")),
        ("GET", "/api/v1/analytics/export/dhis2", ("export.dhis2", "analytics/export/dhis2")),
        ("GET", f"/api/v1/volunteers/{VID}/enrollments", None),
        ("GET", "/api/v1/organizations", None),
        ("GET", "/api/v1/analytics/hours", None),
    ],
)
def test_classify(method, path, expected):
    assert classify(method, path, scope()) == expected


def test_analytics_as_csv_is_an_export():
    assert classify("GET", "/api/v1/analytics/hours", scope(b"text/csv")) == ("analytics.export", "analytics/hours")


async def test_queued_entries_are_written_in_batches_and_flushed_at_shutdown(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    try:
        await migrate(engine, MIGRATIONS)
        writer = AuditWriter(make_sessionmaker(engine), batch_size=7)
        caller = CallerContext(str(uuid.uuid4()), uuid.uuid4(), frozenset({"registry:read"}))
        writer.start()
        for i in range(20):  # queued without waiting: the hot path never awaits the database
            writer.record(entry(caller, "abcd1234", "volunteer.read", f"volunteers/{i}", 200))
        await writer.stop()
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT count(*), count(DISTINCT object) FROM audit_events"))).one()
        assert tuple(stored) == (20, 20)
    finally:
        await engine.dispose()


@pytest.fixture
async def pg_engine(tmp_path):
    databases = Databases(tmp_path, "postgresql")
    engine = make_engine(databases.url("gateway"))
    try:
        await migrate(engine, MIGRATIONS)
        yield engine
    finally:
        await engine.dispose()
        databases.drop()


async def stored(engine) -> list[tuple]:
    async with engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(text(
            "SELECT id, at, actor_key_id, actor_prefix, organization_id, action, object, status, request_id "
            "FROM audit_events ORDER BY object"))]


@pytest.mark.skipif(database_mode() != "postgresql", reason="the COPY writer is PostgreSQL's; this run is on SQLite")
async def test_postgresql_batches_are_copied_on_the_writers_own_connection_and_it_reconnects(pg_engine):
    writer = AuditWriter(make_sessionmaker(pg_engine), linger=0.01, dsn=copy_dsn(pg_engine))
    caller = CallerContext(str(uuid.uuid4()), uuid.uuid4(), frozenset({"registry:read"}))
    writer.start()
    before = datetime.now(timezone.utc)
    token = request_id_var.set("rid-1")
    try:
        writer.record(entry(caller, "abcd1234", "volunteer.read", "volunteers/a", 200))
    finally:
        request_id_var.reset(token)
    await eventually_stored(pg_engine, 1)
    row = (await stored(pg_engine))[0]
    assert isinstance(row[0], uuid.UUID) and row[0].version == 4
    assert before - timedelta(seconds=1) <= row[1] <= datetime.now(timezone.utc)
    assert row[2:] == (uuid.UUID(caller.key_id), "abcd1234", caller.organization_id, "volunteer.read", "volunteers/a", 200, "rid-1")
    # The server drops the writer's connection: the next batch is written on a new one, nothing lost.
    async with pg_engine.connect() as conn:
        killed = (await conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'COPY%'"))).scalar_one()
    assert killed == 1
    for i in range(30):
        writer.record(entry(caller, "abcd1234", "volunteer.create", f"volunteers/b{i:02d}", 201))
    await writer.stop()
    rows = await stored(pg_engine)
    assert len(rows) == 31 and len({row[0] for row in rows}) == 31
    assert [row[6] for row in rows[1:]] == [f"volunteers/b{i:02d}" for i in range(30)]


async def eventually_stored(engine, count: int) -> None:
    async def enough() -> bool:
        return len(await stored(engine)) >= count

    await eventually(enough, timeout=10, interval=0.02, what=f"{count} audit rows stored")


def test_the_copy_connection_uses_the_databases_address_and_credentials():
    engine = make_engine("postgresql+asyncpg://vmc:p%40ss@db.example:6543/gateway?ssl=require")
    assert copy_dsn(engine) == "postgresql://vmc:p%40ss@db.example:6543/gateway?sslmode=require"
    assert copy_dsn(make_engine("sqlite+aiosqlite:///gateway.db")) is None
