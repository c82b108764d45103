"""Which proxied requests the audit trail records, and as what (never the personal data itself)."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from gateway.audit import AuditWriter, classify, entry
from gateway.migrations import MIGRATIONS
from shared.caller import CallerContext
from shared.db import make_engine, make_sessionmaker, migrate

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
