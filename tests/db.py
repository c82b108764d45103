"""Rolled-back database sessions on a service's real migrations: test a rule or a query without the stack.

`tests/conftest.py` declares one fixture per service with `db_session(name, MIGRATIONS)`; a test asks
for `registry_session` (say) and gets an AsyncSession inside a transaction that is rolled back after
the test. The code under test may flush, open savepoints and even call `commit()`: with
`join_transaction_mode="create_savepoint"` a commit only releases a savepoint of the outer transaction.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shared.db import Migration, make_engine, migrate
from tests.harness import Databases, database_mode, new_workdir, remove_workdir


class MigratedDatabases:
    """Fresh databases of a test session, one per (service, dialect), migrated on first use, dropped at close."""

    def __init__(self) -> None:
        # A directory of its own: the stack's SQLite files are named after the services too.
        self.workdir = new_workdir()
        self.databases: dict[str, Databases] = {}
        self.engines: dict[tuple[str, str], AsyncEngine] = {}

    async def engine(self, service: str, migrations: Sequence[Migration], mode: str | None = None) -> AsyncEngine:
        """The engine of `service`'s database on `mode` ('postgresql' or 'sqlite'; this run's by default)."""
        mode = mode or database_mode()
        if (service, mode) not in self.engines:
            databases = self.databases.setdefault(mode, Databases(self.workdir, mode))
            engine = make_engine(databases.url(service))
            await migrate(engine, migrations)
            self.engines[service, mode] = engine
        return self.engines[service, mode]

    async def close(self) -> None:
        for engine in self.engines.values():
            await engine.dispose()
        for databases in self.databases.values():
            databases.drop()
        remove_workdir(self.workdir)


@asynccontextmanager
async def rolled_back_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside an outer transaction that is rolled back at the end, whatever the code did."""
    async with engine.connect() as connection:
        outer = await connection.begin()
        session = AsyncSession(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            await session.close()
            await outer.rollback()


def db_session(service: str, migrations: Sequence[Migration]):
    """A function-scoped fixture: a rolled-back session on `service`'s database, migrated with `migrations`."""

    @pytest.fixture
    async def session(migrated_databases: MigratedDatabases) -> AsyncIterator[AsyncSession]:
        async with rolled_back_session(await migrated_databases.engine(service, migrations)) as s:
            yield s

    return session
