"""Registry rules and queries on a rolled-back session (tests/db.py): no processes, real migrations.

Under tests/integration so that `make test` runs them on PostgreSQL and again on SQLite.
"""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.volunteers import repository, service
from shared.errors import ProblemError
from shared.events import REGISTRY_TOPIC
from shared.outbox import OutboxRecord
from tests.factories import (
    enrollment_row, national_scope, organization_row, organization_scope, project_row, volunteer_row, years_ago,
)


# ---- rules ----------------------------------------------------------------------------------------
async def test_a_volunteer_under_ten_is_refused_and_nothing_is_staged(registry_session: AsyncSession):
    with pytest.raises(ProblemError) as refused:
        await volunteer_row(registry_session, national_scope(), date_of_birth=years_ago(9))  # 8 or 9 today
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
