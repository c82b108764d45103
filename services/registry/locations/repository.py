"""Queries on the gazetteer."""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.locations.models import Location


async def missing_codes(session: AsyncSession, codes: Iterable[str], level: str | None = None) -> list[str]:
    """The codes (of `level`, if given) that the gazetteer does not hold, sorted."""
    wanted = set(codes)
    if not wanted:
        return []
    query = select(Location.code).where(Location.code.in_(wanted))
    if level is not None:
        query = query.where(Location.level == level)
    found = set((await session.execute(query)).scalars())
    return sorted(wanted - found)
