"""Queries on activities: lookups, the day totals behind the 24-hour rule and its lock, bulk writes, lists."""
from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from operator import itemgetter

import orjson
from sqlalchemy import JSON, Select, func, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities.models import COUNTING, Activity
from services.activities.activity_types.models import ActivityType
from shared.events import CATALOGUE, EncodedEvent
from shared.outbox import OutboxRecord, mark_written

DayKey = tuple[uuid.UUID, date]


async def get(session: AsyncSession, activity_id: uuid.UUID) -> Activity | None:
    return await session.get(Activity, activity_id)


async def by_client_references(session: AsyncSession, organization_id: uuid.UUID, refs: Collection[str]) -> dict[str, uuid.UUID]:
    """The ids of the organisation's entries that carry these references."""
    if not refs:
        return {}
    if session.bind.dialect.name == "postgresql":
        # One index probe per reference, whatever the planner believes: an IN list of bind parameters is
        # checked row by row against every reference over all the organisation's entries (the planner,
        # on fresh statistics, expects few), 0.6 s a batch of 1000 at 20k entries and growing (measured).
        # LIMIT 1 keeps the subquery from being flattened into a hash join over the organisation's rows.
        rows = await session.execute(
            text("SELECT a.client_reference, a.id FROM unnest(CAST(:refs AS varchar[])) AS r(ref) CROSS JOIN LATERAL "
                 "(SELECT client_reference, id FROM activities WHERE submitter_organization_id = :org "
                 "AND client_reference = r.ref LIMIT 1) AS a").columns(_TABLE.c.client_reference, _TABLE.c.id),
            {"refs": list(refs), "org": organization_id},
        )
        return dict(rows.all())
    query = select(Activity.client_reference, Activity.id).where(Activity.submitter_organization_id == organization_id,
                                                                 Activity.client_reference.in_(list(refs)))
    return dict((await session.execute(query)).all())


def _day_lock_key(volunteer: str, day: str) -> str:
    """The SQL of a volunteer-day's advisory lock key: one expression wherever the lock is taken."""
    return f"hashtextextended({volunteer}::text || ':' || {day}::text, 0)"


async def lock_days(session: AsyncSession, keys: Collection[DayKey]) -> None:
    """Hold each volunteer-day until the transaction ends, so that two concurrent requests cannot both
    see room under 24 hours and together exceed it. PostgreSQL: transaction advisory locks on a hash of
    the day, taken in key order (no deadlock between two batches), the keys computed by the server from
    two array parameters. SQLite has one writer connection: already serial."""
    if not keys or session.bind.dialect.name != "postgresql":
        return
    volunteers, dates = zip(*keys)
    await session.execute(
        text(f"SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT {_day_lock_key('v', 'd')} AS k "
             "FROM unnest(CAST(:volunteers AS uuid[]), CAST(:dates AS date[])) AS u(v, d) ORDER BY 1) AS s"),
        {"volunteers": list(volunteers), "dates": list(dates)},
    )


async def day_totals(session: AsyncSession, keys: Collection[DayKey], exclude: Collection[uuid.UUID] = ()) -> dict[DayKey, float]:
    """Hours already counted on each volunteer-day (submitted and verified entries)."""
    if not keys:
        return {}
    if session.bind.dialect.name == "postgresql":
        # The days as two array parameters joined to the table: one index probe per day, one statement
        # text whatever the number of days (an IN list of each volunteer and each date crossed them).
        volunteers, dates = zip(*keys)
        rows = await session.execute(
            text("SELECT a.volunteer_id, a.date, sum(a.hours) AS total FROM unnest(CAST(:volunteers AS uuid[]), "
                 "CAST(:dates AS date[])) AS k(v, d) JOIN activities AS a ON a.volunteer_id = k.v AND a.date = k.d "
                 "WHERE a.status = ANY(CAST(:counting AS varchar[])) AND a.id <> ALL(CAST(:exclude AS uuid[])) "
                 "GROUP BY a.volunteer_id, a.date").columns(_TABLE.c.volunteer_id, _TABLE.c.date, _TABLE.c.hours),
            {"volunteers": list(volunteers), "dates": list(dates), "exclude": list(exclude), "counting": list(COUNTING)},
        )
        return {(v, d): float(total or 0) for v, d, total in rows.all()}
    volunteers, dates = {k[0] for k in keys}, {k[1] for k in keys}
    query = (select(Activity.volunteer_id, Activity.date, func.sum(Activity.hours))
             .where(Activity.volunteer_id.in_(list(volunteers)), Activity.date.in_(list(dates)),
                    Activity.status.in_(COUNTING))
             .group_by(Activity.volunteer_id, Activity.date))
    if exclude:
        query = query.where(Activity.id.not_in(list(exclude)))
    return {(v, d): float(total or 0) for v, d, total in (await session.execute(query)).all() if (v, d) in keys}


async def focus_areas(session: AsyncSession, codes: Collection[str]) -> dict[str, str]:
    """The focus area of each of these activity types that exists."""
    if not codes:
        return {}
    query = select(ActivityType.code, ActivityType.focus_area).where(ActivityType.code.in_(list(codes)))
    return dict((await session.execute(query)).all())


_TABLE = Activity.__table__
_COLUMNS = [c.name for c in _TABLE.columns]
_IN_ORDER = itemgetter(*_COLUMNS)
_JSON_AT = [at for at, c in enumerate(_TABLE.columns) if isinstance(c.type, JSON)]
_JSON_NAMES = [c.name for c in _TABLE.columns if isinstance(c.type, JSON)]
# Below this many rows a COPY's own set-up costs more than the INSERT it replaces.
COPY_FROM = 20


async def insert_many(session: AsyncSession, rows: Sequence[dict]) -> None:
    """All the rows in one go, in the transaction: COPY on PostgreSQL with asyncpg (the fastest write
    measured, 41-44k rows/s against 25k for an executemany: measured.md), one executemany elsewhere."""
    if not rows:
        return
    connection = await session.connection()
    if len(rows) >= COPY_FROM and connection.dialect.name == "postgresql" and connection.dialect.driver == "asyncpg":
        driver = (await connection.get_raw_connection()).driver_connection
        records = []
        for row in rows:
            record = list(_IN_ORDER(row))
            for at in _JSON_AT:
                record[at] = orjson.dumps(record[at]).decode()
            records.append(record)
        await driver.copy_records_to_table(_TABLE.name, records=records, columns=_COLUMNS)
    else:
        await session.execute(insert(_TABLE), list(rows))


@dataclass
class ActivityFilters:
    volunteer_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    organization_id: uuid.UUID | None = None
    status: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    updated_since: datetime | None = None


def list_query(orgs: Collection[uuid.UUID] | None, f: ActivityFilters) -> Select:
    query = select(Activity)
    if orgs is not None:
        query = query.where(Activity.organization_id.in_(list(orgs)) | Activity.volunteer_organization_id.in_(list(orgs)))
    for column, value in ((Activity.volunteer_id, f.volunteer_id), (Activity.project_id, f.project_id),
                          (Activity.organization_id, f.organization_id), (Activity.status, f.status)):
        if value is not None:
            query = query.where(column == value)
    if f.date_from is not None:
        query = query.where(Activity.date >= f.date_from)
    if f.date_to is not None:
        query = query.where(Activity.date <= f.date_to)
    if f.updated_since is not None:
        query = query.where(Activity.updated_at >= f.updated_since)
    return query


async def rows(session: AsyncSession, query: Select) -> list[Activity]:
    return list((await session.execute(query)).scalars())


async def of_volunteer(session: AsyncSession, volunteer_id: uuid.UUID, *, lock: bool = False) -> list[Activity]:
    query = select(Activity).where(Activity.volunteer_id == volunteer_id).order_by(Activity.date, Activity.created_at)
    if lock and session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    return await rows(session, query)




async def forget_free_text(session: AsyncSession, volunteer_id: uuid.UUID, now: datetime) -> None:
    """Clear what people wrote about the volunteer's work (description, evidence links): it may name them."""
    await session.execute(
        update(Activity).where(Activity.volunteer_id == volunteer_id)
        .values(description=None, evidence_urls=[], updated_at=now).execution_options(synchronize_session=False)
    )


async def set_volunteer_organization(session: AsyncSession, volunteer_id: uuid.UUID, organization_id: uuid.UUID,
                                     now: datetime) -> None:
    """Only rows that change get a new updated_at (incremental sync sends them again)."""
    await session.execute(
        update(Activity).where(Activity.volunteer_id == volunteer_id, Activity.volunteer_organization_id != organization_id)
        .values(volunteer_organization_id=organization_id, updated_at=now).execution_options(synchronize_session=False)
    )


# ---- one entry in two statements (PostgreSQL) ---------------------------------------------------

# The volunteer's row is share-locked first and its day locked after (`registry_view.repository.
# hold_volunteers`), in that order: `day_locked` reads the locked row before it takes the day's lock,
# and the main query counts `day_locked` before it reads anything else. Locking the row makes the
# statement read the row's newest version (a merge or erasure committed while it waited), whatever
# the statement's snapshot. A volunteer the projection lacks takes no lock here: the general path
# (`service._record`) then holds the row before it locks the day, in the same order.
_ONE_ENTRY_FACTS = text(f"""
WITH RECURSIVE
volunteer AS MATERIALIZED (SELECT organization_id, erased, merged_into FROM registry_volunteers
                           WHERE id = CAST(:volunteer AS uuid) FOR SHARE),
day_locked AS MATERIALIZED (
    SELECT pg_advisory_xact_lock({_day_lock_key("CAST(:volunteer AS uuid)", "CAST(:date AS date)")}) FROM volunteer),
project AS (SELECT program_id, organization_id, focus_areas, start_date, end_date FROM registry_projects
            WHERE id = CAST(:project AS uuid)),
tree AS (
    SELECT o.id, o.parent_id FROM registry_organizations AS o
    WHERE o.id IN (SELECT organization_id FROM volunteer UNION ALL SELECT organization_id FROM project)
    UNION
    SELECT o.id, o.parent_id FROM registry_organizations AS o JOIN tree AS t ON o.id = t.parent_id
)
SELECT json_build_object(
    'duplicate_of', (SELECT id FROM activities WHERE submitter_organization_id = CAST(:organization AS uuid)
                     AND client_reference = CAST(:reference AS varchar) LIMIT 1),
    'volunteer', (SELECT row_to_json(volunteer) FROM volunteer),
    'project', (SELECT row_to_json(project) FROM project),
    'organizations', (SELECT coalesce(json_agg(tree), '[]') FROM tree),
    'enrollments', (SELECT coalesce(json_agg(json_build_object('started_on', started_on, 'ended_on', ended_on)), '[]')
                    FROM registry_enrollments WHERE volunteer_id = CAST(:volunteer AS uuid) AND project_id = CAST(:project AS uuid)),
    'location', EXISTS (SELECT 1 FROM registry_locations WHERE code = CAST(:location AS varchar)),
    'focus_area', (SELECT focus_area FROM activity_types WHERE code = CAST(:activity_type AS varchar))
)::text
FROM (SELECT count(*) FROM day_locked) AS locked
""")


async def one_entry_facts(session: AsyncSession, organization_id: uuid.UUID, volunteer_id: uuid.UUID,
                          project_id: uuid.UUID, on: date, location_code: str, activity_type: str,
                          client_reference: str | None) -> dict:
    """Everything the rules need to decide one entry, read in one statement that also holds the
    volunteer's row and then locks its volunteer-day (`lock_days`): the organisation's entry with this
    client reference, the volunteer, the project, the ancestors of their organisations, the enrolments
    in that project, whether the place exists, and the activity type's focus area (JSON: ids and dates
    as text)."""
    answer = await session.scalar(_ONE_ENTRY_FACTS, {
        "organization": organization_id, "volunteer": volunteer_id, "project": project_id, "date": on,
        "location": location_code, "activity_type": activity_type, "reference": client_reference})
    return orjson.loads(answer)


def _typed(column) -> str:
    return f"CAST(:{column.name} AS {column.type.compile(dialect=postgresql.dialect())})"


# The day's total is read by a statement of its own, after the one that took the day's lock (a
# statement sees what was committed when it began). A twin with the same client reference stored
# first makes the insert do nothing, instead of an error that would abort the transaction.
_INSERT_WITHIN_DAY = text(f"""
WITH day AS (SELECT coalesce(sum(hours), 0) AS hours FROM activities
             WHERE volunteer_id = CAST(:volunteer_id AS uuid) AND date = CAST(:date AS date)
             AND status = ANY(CAST(:counting AS varchar[]))),
inserted AS (
    INSERT INTO activities ({", ".join(c.name for c in _TABLE.columns)})
    SELECT {", ".join(_typed(c) for c in _TABLE.columns)} FROM day WHERE day.hours + CAST(:hours AS numeric) <= :most
    ON CONFLICT (submitter_organization_id, client_reference) DO NOTHING RETURNING id
),
event AS (
    INSERT INTO {OutboxRecord.__tablename__} (event_id, topic, key, value, created_at)
    SELECT CAST(:event_id AS varchar), CAST(:topic AS varchar), CAST(:key AS varchar), CAST(:value AS bytea),
           CAST(:created_at AS timestamptz) FROM inserted
)
SELECT (SELECT hours FROM day) AS day_hours, (SELECT id FROM inserted) AS id
""")


async def insert_within_day(session: AsyncSession, row: dict, event: EncodedEvent, most_hours: float) -> tuple[float, bool]:
    """Insert the row and its event's outbox row unless the volunteer's day would then total more than
    `most_hours` or the organisation already has an entry with its client reference; the day's hours
    before, and whether it was inserted. The day must be locked (`one_entry_facts`, `lock_days`)."""
    values = {**row, **{name: orjson.dumps(row[name]).decode() for name in _JSON_NAMES}}
    answer = (await session.execute(_INSERT_WITHIN_DAY, {
        **values, "counting": list(COUNTING), "most": most_hours + 1e-9, "event_id": event.id,
        "topic": CATALOGUE[event.type].topic, "key": event.subject, "value": event.value})).one()
    mark_written(session)
    return float(answer.day_hours), answer.id is not None
