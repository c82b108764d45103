"""Queries on volunteers and their external ids, including the bulk statements of the CSV import."""
from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ARRAY, Select, String, and_, bindparam, cast, delete, exists, func, insert, or_, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.enrollments.models import Enrollment
from services.registry.locations.models import Location
from services.registry.organizations.models import Organization
from services.registry.projects.models import Project
from services.registry.volunteers.models import Volunteer, VolunteerExternalId

V = Volunteer.__table__
X = VolunteerExternalId.__table__


async def get(session: AsyncSession, volunteer_id: uuid.UUID) -> Volunteer | None:
    return await session.get(Volunteer, volunteer_id)


async def get_for_update(session: AsyncSession, volunteer_id: uuid.UUID) -> Volunteer | None:
    """The row, locked on PostgreSQL until the transaction ends (merge and erasure race otherwise)."""
    query = select(Volunteer).where(Volunteer.id == volunteer_id).execution_options(populate_existing=True)
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def external_ids_of(session: AsyncSession, volunteer_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, str]]]:
    found: dict[uuid.UUID, list[tuple[str, str]]] = defaultdict(list)
    if not volunteer_ids:
        return found
    query = select(X.c.volunteer_id, X.c.system, X.c.external_id).where(X.c.volunteer_id.in_(list(volunteer_ids)))
    for volunteer_id, system, external_id in await session.execute(query):
        found[volunteer_id].append((system, external_id))
    return found


async def owners_of_external_ids(session: AsyncSession, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], uuid.UUID]:
    """Which volunteer holds each (system, id); one query per system (a file rarely holds more than one)."""
    by_system: dict[str, set[str]] = defaultdict(set)
    for system, external_id in pairs:
        by_system[system].add(external_id)
    owners: dict[tuple[str, str], uuid.UUID] = {}
    postgresql = session.bind.dialect.name == "postgresql"
    for system, ids in by_system.items():
        if postgresql:
            # A join with the array, not `external_id IN (...)`: under a prepared statement's generic
            # plan PostgreSQL may scan every id of the system and test each against the whole list
            # (measured: 1.8 s per 1,000-row chunk once a system holds 50,000 ids; this join: ms).
            wanted = func.unnest(cast(list(ids), ARRAY(String))).table_valued("id").render_derived(name="wanted")
            query = select(X.c.external_id, X.c.volunteer_id).join(wanted, X.c.external_id == wanted.c.id)
            query = query.where(X.c.system == system)
        else:
            query = select(X.c.external_id, X.c.volunteer_id).where(X.c.system == system, X.c.external_id.in_(list(ids)))
        for external_id, volunteer_id in await session.execute(query):
            owners[(system, external_id)] = volunteer_id
    return owners


def add_external_ids(session: AsyncSession, volunteer_id: uuid.UUID, pairs: Iterable[tuple[str, str]]) -> None:
    for system, external_id in pairs:
        session.add(VolunteerExternalId(system=system, external_id=external_id, volunteer_id=volunteer_id))


async def remove_external_ids(session: AsyncSession, volunteer_id: uuid.UUID, pairs: Collection[tuple[str, str]] | None = None) -> None:
    """Remove the volunteer's ids (all of them when `pairs` is None)."""
    query = delete(VolunteerExternalId).where(VolunteerExternalId.volunteer_id == volunteer_id)
    if pairs is not None:
        if not pairs:
            return
        query = query.where(or_(*(and_(VolunteerExternalId.system == s, VolunteerExternalId.external_id == i) for s, i in pairs)))
    await session.execute(query)


async def move_external_ids(session: AsyncSession, from_id: uuid.UUID, to_id: uuid.UUID) -> None:
    await session.execute(update(VolunteerExternalId).where(VolunteerExternalId.volunteer_id == from_id).values(volunteer_id=to_id))


async def repoint_merged(session: AsyncSession, from_id: uuid.UUID, to_id: uuid.UUID, now: datetime) -> None:
    """Records merged earlier into `from_id` now point at its survivor, so chains stay one hop long."""
    await session.execute(
        update(Volunteer).where(Volunteer.merged_into == from_id).values(merged_into=to_id, updated_at=now)
    )


async def merged_into(session: AsyncSession, survivor_id: uuid.UUID) -> list[Volunteer]:
    return list((await session.execute(select(Volunteer).where(Volunteer.merged_into == survivor_id))).scalars())


# ---- lists -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VolunteerFilters:
    organization_id: uuid.UUID | None = None
    province: str | None = None
    program_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    name_key: str | None = None  # normalised `q`
    phone: str | None = None  # `q` read as a phone number, when it is one
    external_system: str | None = None
    external_id: str | None = None
    updated_since: datetime | None = None


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_query(orgs: Collection[uuid.UUID] | None, f: VolunteerFilters) -> Select:
    """Visible volunteers matching the filters; merged duplicates leave lists, erased ones stay (for sync)."""
    query = select(Volunteer).where(Volunteer.merged_into.is_(None))
    if orgs is not None:
        query = query.where(Volunteer.organization_id.in_(list(orgs)))
    if f.organization_id is not None:
        query = query.where(Volunteer.organization_id == f.organization_id)
    if f.province is not None:
        query = query.where(Volunteer.residence_province == f.province)
    if f.project_id is not None:
        query = query.where(exists().where(Enrollment.volunteer_id == Volunteer.id, Enrollment.project_id == f.project_id))
    if f.program_id is not None:
        query = query.where(
            exists().where(Enrollment.volunteer_id == Volunteer.id, Enrollment.project_id == Project.id,
                           Project.program_id == f.program_id)
        )
    if f.name_key is not None or f.phone is not None:
        matches = []
        if f.name_key:
            pattern = f"%{_like_escape(f.name_key)}%"
            matches += [Volunteer.name_latin_key.like(pattern, escape="\\"), Volunteer.name_km_key.like(pattern, escape="\\")]
        if f.phone:
            matches.append(Volunteer.phone == f.phone)
        query = query.where(or_(*matches))
    if f.external_system is not None or f.external_id is not None:
        held = select(X.c.volunteer_id)
        if f.external_system is not None:
            held = held.where(X.c.system == f.external_system)
        if f.external_id is not None:
            held = held.where(X.c.external_id == f.external_id)
        query = query.where(Volunteer.id.in_(held))
    if f.updated_since is not None:
        query = query.where(Volunteer.updated_at >= f.updated_since)
    return query


async def rows(session: AsyncSession, query: Select) -> list[Volunteer]:
    return list((await session.execute(query)).scalars())


# ---- duplicates --------------------------------------------------------------------------------

def _active(table):
    return and_(table.c.erased.is_(False), table.c.merged_into.is_(None))


async def duplicate_pairs(
    session: AsyncSession, orgs: Collection[uuid.UUID] | None, limit: int, after: tuple[uuid.UUID, uuid.UUID] | None
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Pairs (a < b) of active, visible volunteers sharing a phone, or a name key and a birth date.

    Each reason is an equality join that an index serves; the union removes pairs found twice.
    """
    a, b = V.alias("a"), V.alias("b")

    def pairs(condition):
        query = select(a.c.id.label("a_id"), b.c.id.label("b_id")).select_from(a.join(b, and_(condition, a.c.id < b.c.id)))
        query = query.where(_active(a), _active(b))
        if orgs is not None:
            query = query.where(a.c.organization_id.in_(list(orgs)), b.c.organization_id.in_(list(orgs)))
        return query

    found = union(
        pairs(and_(a.c.phone.is_not(None), a.c.phone == b.c.phone)),
        pairs(and_(a.c.name_latin_key.is_not(None), a.c.name_latin_key == b.c.name_latin_key,
                   a.c.date_of_birth == b.c.date_of_birth)),
        pairs(and_(a.c.name_km_key.is_not(None), a.c.name_km_key == b.c.name_km_key,
                   a.c.date_of_birth == b.c.date_of_birth)),
    ).subquery()
    query = select(found.c.a_id, found.c.b_id)
    if after is not None:
        query = query.where(or_(found.c.a_id > after[0], and_(found.c.a_id == after[0], found.c.b_id > after[1])))
    query = query.order_by(found.c.a_id, found.c.b_id).limit(limit + 1)
    return [(row.a_id, row.b_id) for row in await session.execute(query)]


async def by_ids(session: AsyncSession, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Volunteer]:
    if not ids:
        return {}
    return {v.id: v for v in (await session.execute(select(Volunteer).where(Volunteer.id.in_(list(ids))))).scalars()}


# ---- bulk statements of the CSV import (core executemany: no ORM objects, no per-row flush) ----

PERSON_COLUMNS = (
    "name_latin", "name_km", "name_latin_key", "name_km_key", "sex", "date_of_birth", "phone", "email",
    "residence_province", "residence_commune", "education_level", "disability", "organization_id",
    "consent_given", "consent_given_at", "guardian_name", "guardian_relation",
)


async def rows_by_ids(session: AsyncSession, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """Plain dicts of the columns the importer compares (cheaper than ORM objects for a chunk)."""
    if not ids:
        return {}
    query = select(V.c.id, V.c.erased, V.c.merged_into, V.c.created_at, *(V.c[name] for name in PERSON_COLUMNS))
    query = query.where(V.c.id.in_(list(ids)))
    return {row.id: dict(row._mapping) for row in await session.execute(query)}


async def identity_matches(
    session: AsyncSession, orgs: Collection[uuid.UUID] | None, latin_keys: set[str], km_keys: set[str]
) -> list[dict]:
    """Active visible volunteers whose Latin or Khmer name key is among the given ones."""
    conditions = []
    if latin_keys:
        conditions.append(V.c.name_latin_key.in_(list(latin_keys)))
    if km_keys:
        conditions.append(V.c.name_km_key.in_(list(km_keys)))
    if not conditions:
        return []
    query = select(V.c.id, V.c.name_latin_key, V.c.name_km_key, V.c.date_of_birth).where(or_(*conditions), _active(V))
    if orgs is not None:
        query = query.where(V.c.organization_id.in_(list(orgs)))
    return [dict(row._mapping) for row in await session.execute(query)]


async def insert_volunteers(session: AsyncSession, values: list[dict]) -> None:
    if values:
        await session.execute(insert(V), values)


async def insert_external_ids(session: AsyncSession, values: list[dict]) -> None:
    if values:
        await session.execute(insert(X), values)


async def update_volunteers(session: AsyncSession, values: list[dict]) -> None:
    """Each dict holds `row_id` and every person column plus `updated_at` (one executemany)."""
    if not values:
        return
    columns = (*PERSON_COLUMNS, "updated_at")
    statement = update(V).where(V.c.id == bindparam("row_id")).values({name: bindparam(name) for name in columns})
    # On the session's connection: a plain Core executemany, no ORM bulk-update machinery.
    await (await session.connection()).execute(statement, values)


async def place_codes(session: AsyncSession) -> tuple[set[str], set[str]]:
    """All province and commune codes of the gazetteer (a few thousand), for validating a whole file."""
    query = select(Location.code, Location.level).where(Location.level.in_(["province", "commune"]))
    provinces, communes = set(), set()
    for code, level in await session.execute(query):
        (provinces if getattr(level, "value", level) == "province" else communes).add(code)
    return provinces, communes


async def existing_organizations(session: AsyncSession, ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    wanted, found = list(ids), set()
    # Drivers cap the bind parameters of one statement (asyncpg 32767).
    for start in range(0, len(wanted), 1000):
        query = select(Organization.id).where(Organization.id.in_(wanted[start:start + 1000]))
        found.update((await session.execute(query)).scalars())
    return found
