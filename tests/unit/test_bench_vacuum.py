"""bench.stack.vacuum: the benchmark stands in for autovacuum (off on the machine's PostgreSQL)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import asyncpg
import pytest

from bench.stack import vacuum
from tests.harness import Databases, database_mode


async def dead_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 't'")
    finally:
        await conn.close()


def test_vacuum_leaves_sqlite_alone(tmp_path):
    vacuum(SimpleNamespace(db_urls={"registry": f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"}))
    assert not (tmp_path / "r.db").exists()  # not even opened


@pytest.mark.skipif(database_mode() != "postgresql", reason="vacuums PostgreSQL; this run is on SQLite")
def test_vacuum_clears_the_dead_rows_of_a_postgresql_database(tmp_path):
    databases = Databases(tmp_path, "postgresql")
    try:
        url = databases.url("registry")
        plain = url.replace("postgresql+asyncpg://", "postgresql://")

        async def churn() -> None:
            conn = await asyncpg.connect(plain)
            try:
                await conn.execute("CREATE TABLE t (id int PRIMARY KEY, done timestamptz)")
                await conn.execute("INSERT INTO t SELECT g, NULL FROM generate_series(1, 500) g")
                await conn.execute("UPDATE t SET done = now()")  # an outbox marking rows published
            finally:
                await conn.close()

        asyncio.run(churn())
        assert asyncio.run(dead_rows(plain)) == 500
        vacuum(SimpleNamespace(db_urls={"registry": url}))
        assert asyncio.run(dead_rows(plain)) == 0
    finally:
        databases.drop()
