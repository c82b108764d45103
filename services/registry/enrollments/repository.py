"""Queries on enrolments."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.enrollments.models import Enrollment
from services.registry.projects.models import Project
from shared.pagination import paginate


async def get(session: AsyncSession, enrollment_id: uuid.UUID, *, lock: bool = False) -> Enrollment | None:
    query = select(Enrollment).where(Enrollment.id == enrollment_id)
    if lock and session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def project(session: AsyncSession, project_id: uuid.UUID) -> Project | None:
    return await session.get(Project, project_id)


async def open_enrollment(session: AsyncSession, volunteer_id: uuid.UUID, project_id: uuid.UUID) -> Enrollment | None:
    query = select(Enrollment).where(
        Enrollment.volunteer_id == volunteer_id, Enrollment.project_id == project_id, Enrollment.ended_on.is_(None)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def open_of(session: AsyncSession, volunteer_id: uuid.UUID) -> list[Enrollment]:
    query = select(Enrollment).where(Enrollment.volunteer_id == volunteer_id, Enrollment.ended_on.is_(None))
    return list((await session.execute(query)).scalars())


async def move(session: AsyncSession, from_volunteer: uuid.UUID, to_volunteer: uuid.UUID, now: datetime) -> None:
    await session.execute(
        update(Enrollment).where(Enrollment.volunteer_id == from_volunteer).values(volunteer_id=to_volunteer, updated_at=now)
    )


async def page(
    session: AsyncSession, volunteer_id: uuid.UUID, limit: int, cursor: str | None,
    updated_since: datetime | None = None, open_only: bool | None = None,
) -> list[Enrollment]:
    query = select(Enrollment).where(Enrollment.volunteer_id == volunteer_id)
    if updated_since is not None:
        query = query.where(Enrollment.updated_at >= updated_since)
    if open_only is True:
        query = query.where(Enrollment.ended_on.is_(None))
    elif open_only is False:
        query = query.where(Enrollment.ended_on.is_not(None))
    return list((await session.execute(paginate(query, Enrollment, limit, cursor))).scalars())
