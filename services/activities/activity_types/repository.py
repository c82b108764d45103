"""Queries on activity types."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activity_types.models import ActivityType


async def all_types(session: AsyncSession) -> list[ActivityType]:
    return list((await session.execute(select(ActivityType).order_by(ActivityType.code))).scalars())


async def by_codes(session: AsyncSession, codes: set[str]) -> dict[str, ActivityType]:
    if not codes:
        return {}
    rows = (await session.execute(select(ActivityType).where(ActivityType.code.in_(codes)))).scalars()
    return {row.code: row for row in rows}
