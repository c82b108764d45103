"""Queries on the registry projection: bulk reads by id, and upserts that tolerate concurrent writers."""
from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import date

from sqlalchemy import ARRAY, Table, any_, cast, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.registry_view.models import (
    FETCHED, EnrollmentView, LocationView, OrganizationView, ProjectView, VolunteerView,
)


async def _by_ids(session: AsyncSession, model, ids: Collection) -> dict:
    if not ids:
        return {}
    key = model.code if model is LocationView else model.id
    # Read-only rows with the model's attributes, not tracked ORM objects, and the ids as one array
    # parameter on PostgreSQL, not a thousand: a batch of activities reads a thousand volunteers and
    # enrolments, and objects and expanded parameters cost more than the query itself.
    columns = [c for c in model.__table__.columns if c.name != "event_time"]  # the rules never read it
    rows = (await session.execute(select(*columns).where(_among(session, key, ids)))).all()
    return {(r.code if model is LocationView else r.id): r for r in rows}


def _among(session: AsyncSession, column, values: Collection):
    if session.bind.dialect.name == "postgresql":
        return column == any_(cast(list(values), ARRAY(column.type)))
    return column.in_(list(values))


async def volunteers(session: AsyncSession, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, VolunteerView]:
    return await _by_ids(session, VolunteerView, ids)


async def projects(session: AsyncSession, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, ProjectView]:
    return await _by_ids(session, ProjectView, ids)


async def locations(session: AsyncSession, codes: Collection[str]) -> dict[str, LocationView]:
    return await _by_ids(session, LocationView, codes)


async def organization_parents(session: AsyncSession) -> dict[uuid.UUID, uuid.UUID | None]:
    """Every organisation with its parent (a few hundred rows of two ids): visibility walks the tree in memory."""
    return dict((await session.execute(select(OrganizationView.id, OrganizationView.parent_id))).all())


async def enrollments(session: AsyncSession, volunteer_ids: Collection[uuid.UUID],
                      project_ids: Collection[uuid.UUID]) -> list[EnrollmentView]:
    if not volunteer_ids or not project_ids:
        return []
    query = select(*EnrollmentView.__table__.columns).where(_among(session, EnrollmentView.volunteer_id, volunteer_ids),
                                                            _among(session, EnrollmentView.project_id, project_ids))
    return list((await session.execute(query)).all())


Day = tuple[uuid.UUID, uuid.UUID, date]  # (volunteer, project, date)


def covers(enrollment, on: date) -> bool:
    """Whether the enrolment (anything with started_on and ended_on) covers the date."""
    return enrollment.started_on <= on and (enrollment.ended_on is None or on <= enrollment.ended_on)


async def enrolled_days(session: AsyncSession, days: Sequence[Day]) -> set[Day]:
    """Those of these days on which the volunteer is enrolled in the project. PostgreSQL answers with
    the ordinals of the covered days (the days as three array parameters: no enrolment rows to read
    back and convert, one index probe a day); elsewhere the pairs' enrolments are compared here."""
    if not days:
        return set()
    if session.bind.dialect.name == "postgresql":
        volunteers, projects, dates = zip(*days)
        rows = await session.execute(text(
            "SELECT i.n FROM unnest(CAST(:volunteers AS uuid[]), CAST(:projects AS uuid[]), CAST(:dates AS date[])) "
            "WITH ORDINALITY AS i(v, p, d, n) WHERE EXISTS (SELECT 1 FROM registry_enrollments AS e "
            "WHERE e.volunteer_id = i.v AND e.project_id = i.p AND e.started_on <= i.d "
            "AND (e.ended_on IS NULL OR i.d <= e.ended_on))"),
            {"volunteers": list(volunteers), "projects": list(projects), "dates": list(dates)})
        return {days[n - 1] for (n,) in rows.all()}
    by_pair: dict[tuple[uuid.UUID, uuid.UUID], list] = {}
    for row in await enrollments(session, {d[0] for d in days}, {d[1] for d in days}):
        by_pair.setdefault((row.volunteer_id, row.project_id), []).append(row)
    return {(v, p, on) for v, p, on in days if any(covers(e, on) for e in by_pair.get((v, p), ()))}


def _insert(session: AsyncSession, table: Table):
    return (pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert)(table)


async def store_fetched(session: AsyncSession, model, rows: Sequence[dict], keys: Sequence[str]) -> None:
    """Write rows the registry answered with. A row an event already wrote (event_time past FETCHED) is
    left alone: events are the projection's truth; an answer only fills what no event brought yet."""
    if not rows:
        return
    table = model.__table__
    statement = _insert(session, table)
    columns = {name: statement.excluded[name] for name in rows[0] if name not in keys}
    if "event_time" in table.c and columns:
        statement = statement.on_conflict_do_update(index_elements=list(keys), set_=columns,
                                                    where=table.c.event_time == FETCHED)
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    # In key order: two requests storing the same rows then lock them in the same order (no deadlock).
    await session.execute(statement, sorted(rows, key=lambda row: tuple(str(row[k]) for k in keys)))


async def insert_missing(session: AsyncSession, model, row: dict) -> None:
    """Insert the row unless one with its key exists, also one a concurrent transaction is inserting
    (this waits for it): a handler meeting the row a request stored from the registry's answer a
    moment before, which a plain insert turned into a unique violation and the batch into a retry."""
    await session.execute(_insert(session, model.__table__).values(**row).on_conflict_do_nothing(index_elements=["id"]))


async def upsert_locations(session: AsyncSession, rows: Sequence[dict]) -> None:
    if not rows:
        return
    statement = _insert(session, LocationView.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["code"], set_={"level": statement.excluded.level, "parent_code": statement.excluded.parent_code})
    await session.execute(statement, sorted(rows, key=lambda row: row["code"]))


async def move_enrollments(session: AsyncSession, from_volunteer: uuid.UUID, to_volunteer: uuid.UUID) -> None:
    """What the registry does to enrolments on a merge, which it publishes no event for (moved rows)."""
    await session.execute(update(EnrollmentView).where(EnrollmentView.volunteer_id == from_volunteer)
                          .values(volunteer_id=to_volunteer).execution_options(synchronize_session=False))


async def hold_volunteers(session: AsyncSession, volunteer_ids: Collection[uuid.UUID]) -> None:
    """Share-lock these volunteers' projection rows until commit, in id order (PostgreSQL; SQLite has
    one writer). A write of new entries takes them before anything else it locks (a volunteer-day's
    lock above all), and the registry handlers lock the row they change first (`handlers._volunteer_row`)
    before they move, clear or re-count the volunteer's entries. So a handler waits for the writes in
    flight and then moves what they wrote, and a write that comes after waits for the handler and
    reads the volunteer as it left it (merged, erased, transferred). Without it an entry decided just
    before a merge and committed just after stayed on the merged-away duplicate. A volunteer the
    projection does not know yet locks nothing (it is read from the registry, and has no entries)."""
    if not volunteer_ids or session.bind.dialect.name != "postgresql":
        return
    await session.execute(select(VolunteerView.id).where(_among(session, VolunteerView.id, volunteer_ids))
                          .order_by(VolunteerView.id).with_for_update(read=True))


async def survivor_of(session: AsyncSession, volunteer_id: uuid.UUID) -> uuid.UUID:
    """The volunteer a record now belongs to: itself, or the survivor of the merges it went through."""
    seen = set()
    row = await session.get(VolunteerView, volunteer_id)
    while row is not None and row.merged_into is not None and row.merged_into not in seen:
        seen.add(row.id)
        volunteer_id = row.merged_into
        row = await session.get(VolunteerView, volunteer_id)
    return volunteer_id
