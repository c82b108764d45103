"""Registry rules and queries on a rolled-back session (tests/db.py): no processes, real migrations.

Under tests/integration so that `make test` runs them on PostgreSQL and again on SQLite.
"""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.migrations import MIGRATIONS
from services.registry.organizations.models import Organization
from services.registry.volunteers import repository, service
from shared.errors import ProblemError
from shared.events import REGISTRY_TOPIC
from shared.outbox import OutboxRecord
from tests.db import MigratedDatabases, rolled_back_session
from tests.factories import (
    national_scope, organization_row, organization_scope, project_row, volunteer_row, enrollment_row, years_ago,
)
from tests.harness import _pg_reachable, unique


async def names_of_organizations(session: AsyncSession, names: list[str]) -> set[str]:
    return set((await session.execute(select(Organization.name).where(Organization.name.in_(names)))).scalars())


# ---- the fixture itself, on both dialects in every run ------------------------------------------
@pytest.mark.parametrize("mode", [
    pytest.param("postgresql", marks=pytest.mark.skipif(not _pg_reachable(), reason="no PostgreSQL at 127.0.0.1:5432")),
    "sqlite",
])
async def test_a_commit_and_savepoints_inside_the_test_session_never_outlive_it(migrated_databases: MigratedDatabases, mode: str):
    engine = await migrated_databases.engine("registry", MIGRATIONS, mode)
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
        assert (await later.execute(select(func.count()).select_from(Organization))).scalar_one() == 1


# ---- rules ----------------------------------------------------------------------------------------
async def test_a_volunteer_under_ten_is_refused_and_nothing_is_staged(registry_session: AsyncSession):
    with pytest.raises(ProblemError) as refused:
        await volunteer_row(registry_session, national_scope(), date_of_birth=years_ago(9, month=1, day=1))
    assert refused.value.status == 422
    assert [e["loc"] for e in refused.value.errors] == [["body", "date_of_birth"]]
    assert "at least 10" in refused.value.errors[0]["msg"]
    assert (await registry_session.execute(select(func.count()).select_from(OutboxRecord))).scalar_one() == 0


async def test_registering_stages_one_event_in_the_same_transaction(registry_session: AsyncSession):
    row = await volunteer_row(registry_session, national_scope())
    staged = (await registry_session.execute(select(OutboxRecord))).scalars().all()
    assert [(r.topic, r.key) for r in staged] == [(REGISTRY_TOPIC, str(row.id))]


async def test_two_volunteers_with_one_phone_are_a_duplicate_pair_by_phone(registry_session: AsyncSession):
    scope = national_scope()
    first = await volunteer_row(registry_session, scope, phone="097 555 0101")
    second = await volunteer_row(registry_session, scope, phone="+855 97 555 0101")  # the same number, typed otherwise
    await volunteer_row(registry_session, scope, phone="097 555 0102")
    found = await service.duplicates(registry_session, scope, limit=10, cursor=None)
    assert [(sorted(p.volunteer_ids), p.reasons) for p in found["items"]] == [(sorted([first.id, second.id]), ["phone"])]


async def test_an_organisation_key_finds_no_duplicates_outside_its_tree(registry_session: AsyncSession):
    national = national_scope()
    ours, theirs = await organization_row(registry_session, national), await organization_row(registry_session, national)
    await volunteer_row(registry_session, national, organization_id=str(ours.id), phone="097 555 0201")
    await volunteer_row(registry_session, national, organization_id=str(theirs.id), phone="097 555 0201")
    assert len((await service.duplicates(registry_session, national, limit=10, cursor=None))["items"]) == 1
    ours_only = await organization_scope(registry_session, ours.id)
    assert (await service.duplicates(registry_session, ours_only, limit=10, cursor=None))["items"] == []


# ---- a repository query ---------------------------------------------------------------------------
async def test_the_volunteer_list_query_filters_by_project_and_leaves_merged_records_out(registry_session: AsyncSession):
    scope = national_scope()
    org = await organization_row(registry_session, scope)
    project = await project_row(registry_session, scope, org.id)
    enrolled, merged, elsewhere = [await volunteer_row(registry_session, scope, organization_id=str(org.id)) for _ in range(3)]
    for volunteer in (enrolled, merged):
        await enrollment_row(registry_session, scope, volunteer.id, project.id)
    await service.merge(registry_session, scope, enrolled.id, merged.id)

    async def listed(**filters) -> set[uuid.UUID]:
        query = repository.list_query(None, repository.VolunteerFilters(**filters))
        return {v.id for v in await repository.rows(registry_session, query)}

    assert await listed(project_id=project.id) == {enrolled.id}
    assert await listed(organization_id=org.id) == {enrolled.id, elsewhere.id}
