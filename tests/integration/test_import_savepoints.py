"""The volunteer CSV import in one unit of work: a chunk that a concurrent writer breaks is undone alone.

On a rolled-back session (tests/db.py), so `make test` runs it on PostgreSQL and again on SQLite.
"""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.volunteers import importer
from services.registry.volunteers.models import Volunteer
from shared.outbox import OutboxRecord
from tests.factories import national_scope, volunteer_row, years_ago

SYSTEM = "test-ngo"


def csv_of(tag: str, external_ids: list[str]) -> bytes:
    lines = ["name_latin,sex,date_of_birth,residence_province,consent_given,external_system,external_id"]
    lines += [f"Dara {tag} {n},male,{years_ago(25)},12,true,{SYSTEM},{ext}" for n, ext in enumerate(external_ids)]
    return "\n".join(lines).encode()


@pytest.mark.parametrize("concurrent_writer", ["once", "on every look"])
async def test_a_chunk_broken_by_a_concurrent_writer_is_undone_alone(
    registry_session: AsyncSession, monkeypatch, concurrent_writer
):
    session, scope, tag = registry_session, national_scope(), uuid.uuid4().hex[:8]
    taken = f"taken-{tag}"
    holder = await volunteer_row(session, scope, external_ids=[{"system": SYSTEM, "id": taken}])
    # Rows 2-3 are the first chunk; rows 4-5 the second, where row 5 names the holder's external id.
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
    real_owners = importer.repository.owners_of_external_ids
    looks = []

    async def owners_missing_a_concurrent_write(session, pairs):
        # The planner does not see the holder yet (it "registered concurrently"): its row 5 insert
        # breaks the unique external id after rows 4 and 5 were written in the chunk's savepoint.
        owners = await real_owners(session, pairs)
        if (SYSTEM, taken) in owners:
            looks.append(1)
            if concurrent_writer == "on every look" or len(looks) == 1:
                del owners[SYSTEM, taken]
        return owners

    monkeypatch.setattr(importer.repository, "owners_of_external_ids", owners_missing_a_concurrent_write)
    outbox_before = (await session.execute(select(func.count()).select_from(OutboxRecord))).scalar_one()

    job = await importer.start(session, scope, csv_of(tag, [f"a-{tag}", f"b-{tag}", f"c-{tag}", taken]))
    for chunk in job.chunks():
        await job.apply(session, chunk, dry_run=False)
    statuses = [(item.index, item.status) for item in job.summary(dry_run=False).items]

    stored = set((await session.execute(select(Volunteer.id).where(Volunteer.name_latin.like(f"Dara {tag}%")))).scalars())
    events = (await session.execute(select(func.count()).select_from(OutboxRecord))).scalar_one() - outbox_before
    if concurrent_writer == "once":
        # Looked again, the second chunk is planned right: row 5 updates the holder.
        assert statuses == [(2, "created"), (3, "created"), (4, "created"), (5, "updated")]
        assert [item.id for item in job.items if item.index == 5] == [holder.id]
        created = {item.id for item in job.items if item.status == "created"}
        assert stored == created | {holder.id}  # nothing of the undone attempt is left
        assert events == 4
    else:
        # The first chunk stays; the second is reported as not saved and nothing of it is stored.
        assert statuses == [(2, "created"), (3, "created"), (4, "error"), (5, "error")]
        assert stored == {item.id for item in job.items if item.status == "created"}
        assert events == 2
