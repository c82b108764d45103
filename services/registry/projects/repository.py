"""Queries on projects."""
from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import String, cast, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.projects.models import Project
from shared.pagination import paginate


async def get(session: AsyncSession, project_id: uuid.UUID) -> Project | None:
    return await session.get(Project, project_id)


async def list_page(
    session: AsyncSession,
    *,
    limit: int,
    cursor: str | None,
    visible_orgs: Collection[uuid.UUID] | None,
    program_id: uuid.UUID | None = None,
    organization_id: uuid.UUID | None = None,
    focus_area: str | None = None,
    location_prefix: str | None = None,
    updated_since: datetime | None = None,
) -> list[Project]:
    """A page of projects in (updated_at, id) order; `visible_orgs` None means every organisation.

    `focus_area` and `location_prefix` match inside the JSON lists by their text, which is portable
    across SQLite and PostgreSQL: list items are quoted, so `"health"` cannot match inside another
    focus area, and `"12` matches exactly the codes starting with 12 (codes are digits only).
    """
    query = select(Project)
    if visible_orgs is not None:
        query = query.where(Project.organization_id.in_(visible_orgs))
    if program_id is not None:
        query = query.where(Project.program_id == program_id)
    if organization_id is not None:
        query = query.where(Project.organization_id == organization_id)
    if focus_area is not None:
        query = query.where(cast(Project.focus_areas, String).contains(f'"{focus_area}"'))
    if location_prefix is not None:
        query = query.where(cast(Project.location_codes, String).contains(f'"{location_prefix}'))
    if updated_since is not None:
        query = query.where(Project.updated_at >= updated_since)
    return list((await session.execute(paginate(query, Project, limit, cursor))).scalars())
