"""Queries on assessments."""
from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.assessments.models import Assessment
from shared.db import utcnow
from shared.pagination import paginate


async def get(session: AsyncSession, assessment_id: uuid.UUID) -> Assessment | None:
    return await session.get(Assessment, assessment_id)


async def current(session: AsyncSession, volunteer_id: uuid.UUID, instrument: str, phase: str) -> Assessment | None:
    """The assessment of this volunteer, instrument and phase that nothing has replaced."""
    query = select(Assessment).where(
        Assessment.volunteer_id == volunteer_id, Assessment.instrument == instrument, Assessment.phase == phase,
        Assessment.replaced_by.is_(None),
    )
    return (await session.execute(query)).scalars().first()


async def mark_replaced(session: AsyncSession, old_id: uuid.UUID, new_id: uuid.UUID) -> bool:
    """Point `old_id` at its replacement; False when something replaced it first (a concurrent twin)."""
    result = await session.execute(
        update(Assessment)
        .where(Assessment.id == old_id, Assessment.replaced_by.is_(None))
        .values(replaced_by=new_id, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


async def list_page(
    session: AsyncSession,
    *,
    limit: int,
    cursor: str | None,
    organization_ids: Collection[uuid.UUID] | None,
    volunteer_id: uuid.UUID | None = None,
    instrument: str | None = None,
    phase: str | None = None,
    current_only: bool | None = None,
    updated_since: datetime | None = None,
) -> list[Assessment]:
    """One page; `organization_ids` None means every organisation (a national key)."""
    query = select(Assessment)
    if organization_ids is not None:
        query = query.where(Assessment.organization_id.in_(organization_ids))
    if volunteer_id is not None:
        query = query.where(Assessment.volunteer_id == volunteer_id)
    if instrument is not None:
        query = query.where(Assessment.instrument == instrument)
    if phase is not None:
        query = query.where(Assessment.phase == phase)
    if current_only is not None:
        query = query.where(Assessment.replaced_by.is_(None) if current_only else Assessment.replaced_by.is_not(None))
    if updated_since is not None:
        query = query.where(Assessment.updated_at >= updated_since)
    return list((await session.execute(paginate(query, Assessment, limit, cursor))).scalars())


async def reassign(session: AsyncSession, duplicate_id: uuid.UUID, survivor_id: uuid.UUID,
                   organization_id: uuid.UUID | None) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Move a merged duplicate's assessments to the survivor (and to its organisation, when known).
    Where both had a current assessment of one instrument and phase, the survivor's stays current and
    the duplicate's is kept as replaced by it (nothing is dropped). Returns those (duplicate's,
    survivor's) pairs."""
    survivors = {(a.instrument, a.phase): a.id for a in await _current_of(session, survivor_id)}
    clashes = [(a.id, survivors[(a.instrument, a.phase)]) for a in await _current_of(session, duplicate_id)
               if (a.instrument, a.phase) in survivors]
    now = utcnow()
    for duplicate_assessment, kept in clashes:
        await session.execute(update(Assessment).where(Assessment.id == duplicate_assessment)
                              .values(replaced_by=kept, updated_at=now).execution_options(synchronize_session=False))
    moved = {"volunteer_id": survivor_id, "updated_at": now}
    if organization_id is not None:
        moved["organization_id"] = organization_id
    await session.execute(update(Assessment).where(Assessment.volunteer_id == duplicate_id)
                          .values(**moved).execution_options(synchronize_session=False))
    return clashes


async def set_organization(session: AsyncSession, volunteer_id: uuid.UUID, organization_id: uuid.UUID,
                           now: datetime) -> None:
    """Only rows that change get a new updated_at (incremental sync sends them again)."""
    await session.execute(
        update(Assessment).where(Assessment.volunteer_id == volunteer_id, Assessment.organization_id != organization_id)
        .values(organization_id=organization_id, updated_at=now).execution_options(synchronize_session=False)
    )


async def _current_of(session: AsyncSession, volunteer_id: uuid.UUID) -> list[Assessment]:
    query = select(Assessment).where(Assessment.volunteer_id == volunteer_id, Assessment.replaced_by.is_(None))
    return list((await session.execute(query)).scalars())
