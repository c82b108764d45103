"""The rolled-back session fixtures of tests/db.py: each service's real migrations, nothing outliving a test."""
from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.migrations import MIGRATIONS as ACTIVITIES_MIGRATIONS
from services.analytics.migrations import MIGRATIONS as ANALYTICS_MIGRATIONS
from services.registry.migrations import MIGRATIONS as REGISTRY_MIGRATIONS
from services.registry.organizations.models import Organization
from tests.db import MigratedDatabases, rolled_back_session
from tests.factories import national_scope, organization_row
from tests.harness import _pg_reachable, unique


async def names_of_organizations(session: AsyncSession, names: list[str]) -> set[str]:
    return set((await session.execute(select(Organization.name).where(Organization.name.in_(names)))).scalars())


# Both dialects in every run (the suite's PostgreSQL run included): the SQLite case is the fragile one.
@pytest.mark.parametrize("mode", [
    pytest.param("postgresql", marks=pytest.mark.skipif(not _pg_reachable(), reason="no PostgreSQL at 127.0.0.1:5432")),
    "sqlite",
])
async def test_a_commit_and_savepoints_inside_the_test_session_never_outlive_it(migrated_databases: MigratedDatabases, mode: str):
    engine = await migrated_databases.engine("registry", REGISTRY_MIGRATIONS, mode)
    kept, undone = unique("kept"), unique("undone")
    async with rolled_back_session(engine) as session:
        await organization_row(session, national_scope(), name=kept)
        await session.commit()  # what a unit of work does: here it only releases a savepoint
        async with session.begin_nested() as savepoint:  # what a rule undoing part of its work does
            await organization_row(session, national_scope(), name=undone)
            await savepoint.rollback()
        assert await names_of_organizations(session, [kept, undone]) == {kept}
    async with rolled_back_session(engine) as later:
        assert await names_of_organizations(later, [kept, undone]) == set()
        # Only the migrations' own organisation is there: the national body.
        assert [o.national for o in (await later.execute(select(Organization))).scalars()] == [True]


async def test_each_services_session_is_on_all_of_its_migrations(
    registry_session: AsyncSession, activities_session: AsyncSession, analytics_session: AsyncSession,
):
    for session, migrations in ((registry_session, REGISTRY_MIGRATIONS), (activities_session, ACTIVITIES_MIGRATIONS),
                                (analytics_session, ANALYTICS_MIGRATIONS)):
        applied = (await session.execute(text("SELECT version FROM schema_migrations ORDER BY version"))).scalars().all()
        assert applied == sorted(m.version for m in migrations)
