"""Queries on the gazetteer."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from weakref import WeakKeyDictionary

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.locations.models import Location, LocationLevel

# Both drivers cap the bind parameters of one statement (asyncpg 32767); stay well below.
_IN_CHUNK = 1000


# Codes known to exist, per database: gazetteer entries are never deleted and a code's level never
# changes, so a positive answer stays true; a miss is always asked of the database (another replica
# may have imported it). Saves a query on most writes that name a place.
_known_codes: WeakKeyDictionary = WeakKeyDictionary()


async def missing_codes(session: AsyncSession, codes: Iterable[str], level: str | None = None) -> list[str]:
    """The codes (of `level`, if given) that the gazetteer does not hold, sorted."""
    wanted = set(codes)
    if not wanted:
        return []
    known = _known_codes.setdefault(session.bind.sync_engine, {})
    unknown = {code for code in wanted if known.get(code) is None or (level is not None and known[code] != level)}
    if not unknown:
        return []
    query = select(Location.code, Location.level).where(Location.code.in_(unknown))
    found = {code: lvl.value if hasattr(lvl, "value") else lvl for code, lvl in (await session.execute(query)).all()}
    known.update(found)
    return sorted(code for code in unknown if code not in found or (level is not None and found[code] != level))


async def get(session: AsyncSession, code: str) -> Location | None:
    return await session.get(Location, code)


async def by_codes(session: AsyncSession, codes: Iterable[str]) -> dict[str, Location]:
    """The stored entries among `codes`, by code."""
    wanted = sorted(set(codes))
    found: dict[str, Location] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start:start + _IN_CHUNK]
        for location in (await session.execute(select(Location).where(Location.code.in_(chunk)))).scalars():
            found[location.code] = location
    return found


async def list_page(
    session: AsyncSession,
    *,
    limit: int,
    after_code: str | None = None,
    level: LocationLevel | None = None,
    parent_code: str | None = None,
    search_key: str | None = None,
    updated_since: datetime | None = None,
) -> list[Location]:
    """Up to `limit + 1` entries in code order after `after_code` (the extra row tells if more exist).

    Code order lists every parent just before its children, and codes never change, so a keyset on
    the code is stable while entries are added.
    """
    query = select(Location)
    if after_code is not None:
        query = query.where(Location.code > after_code)
    if level is not None:
        query = query.where(Location.level == level)
    if parent_code is not None:
        query = query.where(Location.parent_code == parent_code)
    if search_key:
        query = query.where(Location.search_key.contains(search_key, autoescape=True))
    if updated_since is not None:
        query = query.where(Location.updated_at >= updated_since)
    query = query.order_by(Location.code).limit(limit + 1)
    return list((await session.execute(query)).scalars())


async def insert_many(session: AsyncSession, rows: Sequence[dict]) -> None:
    """Insert new entries in the given order (parents before children: the parent code is a foreign key)."""
    if rows:
        await session.execute(insert(Location.__table__), list(rows))


async def update_many(session: AsyncSession, rows: Sequence[dict]) -> None:
    """Bulk update by primary key: each dict holds `code` and the columns to change."""
    if rows:
        await session.execute(update(Location), list(rows))
