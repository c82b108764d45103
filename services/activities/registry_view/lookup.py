"""Read-your-writes across services: what the rules need of the registry, from the projection, and on a
miss from the registry itself, asked once per request with a short timeout.

When the registry cannot be asked, what the projection lacks is *unknown*, not missing: the caller
answers 503 (retry), never a 422 that would call a volunteer created a moment ago nonexistent.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.registry_view import repository
from services.activities.registry_view.client import RegistryClient, RegistryUnavailable
from services.activities.registry_view.models import (
    FETCHED, EnrollmentView, LocationView, OrganizationView, ProgramView, ProjectView, VolunteerView,
)
from shared.caller import CallerContext
from shared.errors import lost_a_race

log = logging.getLogger(__name__)


@dataclass
class Needs:
    """The references a request's items name: volunteers, projects, places, and (volunteer, project)
    pairs with the dates on which an enrolment must cover them."""

    volunteer_ids: set[uuid.UUID] = field(default_factory=set)
    project_ids: set[uuid.UUID] = field(default_factory=set)
    location_codes: set[str] = field(default_factory=set)
    enrolled_on: dict[tuple[uuid.UUID, uuid.UUID], set[date]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable) -> Needs:
        """What entries (anything with volunteer_id, project_id, date and location_code) name."""
        entries = list(entries)
        enrolled_on: dict[tuple[uuid.UUID, uuid.UUID], set[date]] = {}
        for e in entries:
            enrolled_on.setdefault((e.volunteer_id, e.project_id), set()).add(e.date)
        return cls({e.volunteer_id for e in entries}, {e.project_id for e in entries},
                   {e.location_code for e in entries}, enrolled_on)


@dataclass
class Known:
    volunteers: dict[uuid.UUID, VolunteerView]
    projects: dict[uuid.UUID, ProjectView]
    parents: dict[uuid.UUID, uuid.UUID | None]  # every known organisation and its parent
    enrolled_days: set[repository.Day]  # (volunteer, project, date) an enrolment covers, of those asked
    locations: dict[str, LocationView | bool]
    registry_down: bool = False

    def chain(self, org_id: uuid.UUID | None) -> list[uuid.UUID] | None:
        """The organisation and its ancestors, or None when a link is not known."""
        chain: list[uuid.UUID] = []
        while org_id is not None:
            if org_id not in self.parents or org_id in chain:
                return None
            chain.append(org_id)
            org_id = self.parents[org_id]
        return chain

    def volunteer(self, volunteer_id: uuid.UUID) -> VolunteerView | None:
        """The volunteer when fully known (registration applied and organisation chain known)."""
        row = self.volunteers.get(volunteer_id)
        return row if row is not None and self.chain(row.organization_id) is not None else None

    def project(self, project_id: uuid.UUID) -> ProjectView | None:
        row = self.projects.get(project_id)
        if row is None or self.chain(row.organization_id) is None:
            return None
        return row

    def visible(self, caller: CallerContext, org_id: uuid.UUID) -> bool:
        return caller.national or caller.organization_id in (self.chain(org_id) or ())

    def enrolled(self, volunteer_id: uuid.UUID, project_id: uuid.UUID, on: date) -> bool:
        return (volunteer_id, project_id, on) in self.enrolled_days

    def misses(self, needs: Needs) -> bool:
        return (any(self.volunteer(v) is None for v in needs.volunteer_ids)
                or any(self.project(p) is None for p in needs.project_ids)
                or any(code not in self.locations for code in needs.location_codes)
                or any(not self.enrolled(v, p, on) for (v, p), dates in needs.enrolled_on.items() for on in dates))


class _Volunteer(NamedTuple):
    organization_id: uuid.UUID | None
    erased: bool
    merged_into: uuid.UUID | None


class _Project(NamedTuple):
    program_id: uuid.UUID
    organization_id: uuid.UUID
    focus_areas: list[str]
    start_date: date | None
    end_date: date | None


class _Enrollment(NamedTuple):
    started_on: date
    ended_on: date | None


def _uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


def _date(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


def known_from_facts(facts: dict, volunteer_id: uuid.UUID, project_id: uuid.UUID, on: date, location_code: str) -> Known:
    """What the projection knows of one entry's references, from the JSON of the one-statement read
    (`activities.repository.one_entry_facts`), with the attributes `_load`'s rows have."""
    volunteer, project = facts["volunteer"], facts["project"]
    volunteers = {} if volunteer is None else {volunteer_id: _Volunteer(
        _uuid(volunteer["organization_id"]), volunteer["erased"], _uuid(volunteer["merged_into"]))}
    projects = {} if project is None else {project_id: _Project(
        uuid.UUID(project["program_id"]), uuid.UUID(project["organization_id"]), project["focus_areas"],
        _date(project["start_date"]), _date(project["end_date"]))}
    enrollments = [_Enrollment(date.fromisoformat(e["started_on"]), _date(e["ended_on"])) for e in facts["enrollments"]]
    return Known(
        volunteers=volunteers, projects=projects,
        parents={uuid.UUID(o["id"]): _uuid(o["parent_id"]) for o in facts["organizations"]},
        enrolled_days={(volunteer_id, project_id, on)} if any(repository.covers(e, on) for e in enrollments) else set(),
        locations={location_code: True} if facts["location"] else {},
    )


async def _load(session: AsyncSession, needs: Needs) -> Known:
    days = [(v, p, on) for (v, p), dates in needs.enrolled_on.items() for on in dates]
    return Known(
        volunteers=await repository.volunteers(session, needs.volunteer_ids),
        projects=await repository.projects(session, needs.project_ids),
        parents=await repository.organization_parents(session),
        enrolled_days=await repository.enrolled_days(session, days),
        locations=await repository.locations(session, needs.location_codes),
    )


# Storing what the registry answered can meet the consumer applying the same records' events in another
# order (its batch inserts a volunteer, then a project; the answer is stored projects first): one of the
# two is then a deadlock's victim. The consumer applies its batch again; the request undoes the store
# (a savepoint) and stores again, the consumer's rows committed by then (the rows are the registry's
# facts: the same whoever writes them first). Bounded; past it the error goes on (a 503 "retry").
_STORE_ATTEMPTS = 3


async def _store(session: AsyncSession, answer: dict, present: Known) -> None:
    """Write the answer's records that the projection lacked when it was read (`present`); those it had
    are kept current by events. An upsert locks the row it meets even when it changes nothing: writing
    them again made every request that asked the registry lock its organisations' rows up to the root
    until it committed (one after the other), and made two entries of one volunteer, each holding a
    share of the volunteer's row (`repository.hold_volunteers`), wait for each other: a deadlock."""
    def rows(name: str, skip: Collection = ()) -> list[dict]:
        return [{**row, "event_time": FETCHED} for row in answer.get(name, []) if row["id"] not in skip]

    for attempt in range(1, _STORE_ATTEMPTS + 1):
        try:
            async with session.begin_nested():
                await repository.store_fetched(session, OrganizationView, rows("organizations", present.parents), ["id"])
                await repository.store_fetched(session, ProgramView, rows("programs"), ["id"])
                await repository.store_fetched(session, ProjectView, rows("projects", present.projects), ["id"])
                await repository.store_fetched(session, VolunteerView, rows("volunteers", present.volunteers), ["id"])
                await repository.store_fetched(session, EnrollmentView, rows("enrollments"), ["id"])
                await repository.upsert_locations(session, [row for row in answer.get("locations", [])
                                                            if row["code"] not in present.locations])
            return
        except DBAPIError as exc:
            if attempt == _STORE_ATTEMPTS or not lost_a_race(exc):
                raise
            log.info("storing the registry's answer lost a race; storing it again",
                     extra={"error": repr(exc.orig)[:200], "attempt": attempt})


def _typed(answer: dict) -> dict:
    """JSON values into the column types (ids, dates) the inserts need."""
    ids = ("id", "organization_id", "program_id", "parent_id", "volunteer_id", "project_id", "merged_into")
    dates = ("start_date", "end_date", "started_on", "ended_on")
    out = {}
    for name, rows in answer.items():
        out[name] = [{k: (uuid.UUID(v) if k in ids and v else date.fromisoformat(v) if k in dates and v else v)
                      for k, v in row.items()} for row in rows]
    return out


async def resolve(session: AsyncSession, registry: RegistryClient, needs: Needs) -> Known:
    known = await _load(session, needs)
    if not known.misses(needs):
        return known
    try:
        answer = await registry.references(needs.volunteer_ids, needs.project_ids, needs.location_codes)
    except RegistryUnavailable:
        known.registry_down = True
        return known
    await _store(session, _typed(answer), present=known)
    return await _load(session, needs)
