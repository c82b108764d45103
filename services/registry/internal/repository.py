"""Queries of the internal references route: plain lookups by id, and organisations with their ancestors."""
from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.enrollments.models import Enrollment
from services.registry.locations.models import Location
from services.registry.organizations.models import Organization
from services.registry.programs.models import Program
from services.registry.projects.models import Project
from services.registry.volunteers.models import Volunteer


async def _by(session: AsyncSession, model, column, values: Collection) -> list:
    if not values:
        return []
    return list((await session.execute(select(model).where(column.in_(list(values))))).scalars())


async def volunteers(session: AsyncSession, ids: Collection[uuid.UUID]) -> list[Volunteer]:
    return await _by(session, Volunteer, Volunteer.id, ids)


async def projects(session: AsyncSession, ids: Collection[uuid.UUID]) -> list[Project]:
    return await _by(session, Project, Project.id, ids)


async def programs(session: AsyncSession, ids: Collection[uuid.UUID]) -> list[Program]:
    return await _by(session, Program, Program.id, ids)


async def locations(session: AsyncSession, codes: Collection[str]) -> list[Location]:
    return await _by(session, Location, Location.code, codes)


async def enrollments(session: AsyncSession, volunteer_ids: Collection[uuid.UUID], project_ids: Collection[uuid.UUID]) -> list[Enrollment]:
    if not volunteer_ids or not project_ids:
        return []
    query = select(Enrollment).where(Enrollment.volunteer_id.in_(list(volunteer_ids)),
                                     Enrollment.project_id.in_(list(project_ids)))
    return list((await session.execute(query)).scalars())


async def with_ancestors(session: AsyncSession, ids: Collection[uuid.UUID]) -> list[Organization]:
    """The organisations and every organisation above them."""
    if not ids:
        return []
    chain = select(Organization.id, Organization.parent_id).where(Organization.id.in_(list(ids))).cte("chain", recursive=True)
    chain = chain.union(select(Organization.id, Organization.parent_id).join(chain, Organization.id == chain.c.parent_id))
    return list((await session.execute(select(Organization).where(Organization.id.in_(select(chain.c.id))))).scalars())
