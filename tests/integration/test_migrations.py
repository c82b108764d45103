"""Every component's migrations apply on a fresh database, record their versions, and re-run as no-ops."""
from __future__ import annotations

import asyncio
import importlib

import pytest
from sqlalchemy import text

from shared.db import make_engine, migrate
from tests.harness import Databases

COMPONENTS = {
    "registry": "services.registry.migrations",
    "activities": "services.activities.app",
    "analytics": "services.analytics.migrations",
    "gateway": "gateway.migrations",
}


@pytest.fixture(scope="module")
def databases(workdir):
    dbs = Databases(workdir)
    yield dbs
    dbs.drop()


@pytest.mark.parametrize("component", sorted(COMPONENTS))
async def test_migrations_apply_once_and_record_versions(databases, component):
    migrations = importlib.import_module(COMPONENTS[component]).MIGRATIONS
    engine = make_engine(databases.url(f"mig_{component}"))
    try:
        # Two replicas starting at once: between them every step is applied exactly once.
        first, second = await asyncio.gather(migrate(engine, migrations), migrate(engine, migrations))
        expected = sorted(m.version for m in migrations)
        assert sorted(first + second) == expected
        assert await migrate(engine, migrations) == []
        async with engine.connect() as conn:
            recorded = [row[0] for row in await conn.execute(text("SELECT version FROM schema_migrations ORDER BY version"))]
        assert recorded == expected
    finally:
        await engine.dispose()
