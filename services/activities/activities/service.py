"""Rules for logging activities: references known and visible, the volunteer enrolled and not erased,
dates inside the project and not in the future, at most 24 hours a volunteer-day, one entry per client
reference; the same rules for one entry and for a batch. Also: following a merge of two volunteers.

Every entry is decided first, then all accepted ones are written at once (rows and outbox events)
inside a savepoint: a concurrent twin with the same client reference undoes the writes, and the
decisions are taken again against what the twin stored (bounded: twice). One entry on PostgreSQL
whose references the projection knows takes two statements instead (`_record_one`): the same rules
on one read, then an insert that a twin or a full day turns into nothing, without a savepoint.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities import repository
from services.activities.activities.models import (
    COUNTING, MAX_DAY_HOURS, Activity, ActivityCreate, ActivityPublic, Entry, plain_entry,
)
from services.activities.registry_view import lookup
from services.activities.registry_view import repository as registry_view
from services.activities.registry_view.client import RegistryClient
from services.activities.registry_view.models import VolunteerView
from services.activities.scope import Visibility
from shared.caller import CallerContext
from shared.db import utcnow
from shared.errors import NotFound, ProblemError, validation_errors
from shared.events import (
    ACTIVITY_REASSIGNED, ACTIVITY_SUBMITTED, ActivityChanged, Beneficiaries, CloudEvent, EncodedEvent, encode_event, new_event,
)
from shared.logs import request_id_var
from shared.outbox import add_events
from shared.pagination import encode_cursor, paginate

# Cambodia has one time zone and no daylight saving time: a fixed offset needs no tz database.
PHNOM_PENH = timezone(timedelta(hours=7), "Asia/Phnom_Penh")
RETRY_AFTER_S = "2"


def local_today(now: datetime | None = None) -> date:
    return (now or datetime.now(timezone.utc)).astimezone(PHNOM_PENH).date()


# ---- events ------------------------------------------------------------------------------------

def activity_event(type_: str, row: Activity | Mapping[str, Any]) -> CloudEvent:
    """The event of an activity's state (a row, or the values of one written in bulk)."""
    get = row.get if isinstance(row, Mapping) else lambda name: getattr(row, name)
    payload = ActivityChanged(
        id=get("id"), volunteer_id=get("volunteer_id"), project_id=get("project_id"), program_id=get("program_id"),
        organization_id=get("organization_id"), activity_type=get("activity_type"), focus_area=get("focus_area"),
        project_focus_areas=list(get("project_focus_areas")), date=get("date"), hours=get("hours"),
        approved_hours=get("approved_hours"), location_code=get("location_code"),
        beneficiaries=Beneficiaries(female=get("beneficiaries_female"), male=get("beneficiaries_male"),
                                    other=get("beneficiaries_other"), children=get("beneficiaries_children")),
        status=get("status"), version=get("version"), revision=get("revision"),
    )
    return new_event(type_, payload.id, payload, request_id_var.get())


def submitted_event(values: Mapping[str, Any]) -> EncodedEvent:
    """`activity_event(ACTIVITY_SUBMITTED, values)` in its wire form, built from the decided values
    without pydantic (the models cost more than the rest of deciding an entry); the payload's fields
    in ActivityChanged's order, so the bytes are those the model would give."""
    data = {
        "id": str(values["id"]), "volunteer_id": str(values["volunteer_id"]), "project_id": str(values["project_id"]),
        "program_id": str(values["program_id"]), "organization_id": str(values["organization_id"]),
        "activity_type": values["activity_type"], "focus_area": values["focus_area"],
        "project_focus_areas": list(values["project_focus_areas"]), "date": values["date"].isoformat(),
        "hours": float(values["hours"]), "approved_hours": None, "location_code": values["location_code"],
        "beneficiaries": {"female": values["beneficiaries_female"], "male": values["beneficiaries_male"],
                          "other": values["beneficiaries_other"], "children": values["beneficiaries_children"]},
        "status": "submitted", "version": 1, "revision": 1,
    }
    return encode_event(ACTIVITY_SUBMITTED, data["id"], data, request_id_var.get())


# ---- deciding ----------------------------------------------------------------------------------

@dataclass
class Decision:
    """What becomes of one entry: an error, a duplicate of an existing entry, or values to insert."""

    index: int
    errors: list[dict] = field(default_factory=list)
    # References that could not be checked (registry unavailable): a reason to retry, never a 422.
    unchecked: list[dict] = field(default_factory=list)
    duplicate_of: uuid.UUID | None = None
    values: dict | None = None


Problems = tuple[list[dict], list[dict]]  # (errors, unchecked)


@dataclass
class _Context:
    caller: CallerContext
    known: lookup.Known
    focus_areas: dict[str, str]  # activity type code -> its focus area
    today: date
    # What depends on a volunteer or a project alone, decided once a request (a batch names each many times).
    volunteers: dict[uuid.UUID, Problems] = field(default_factory=dict)
    projects: dict[uuid.UUID, Problems] = field(default_factory=dict)


def _error(field_: str, msg: str) -> dict:
    return {"loc": [field_], "msg": msg}


def _volunteer_problems(ctx: _Context, volunteer_id: uuid.UUID) -> Problems:
    problems: Problems = ([], [])
    raw = ctx.known.volunteers.get(volunteer_id)
    volunteer = ctx.known.volunteer(volunteer_id)
    if volunteer is not None and not ctx.known.visible(ctx.caller, volunteer.organization_id):
        problems[0].append(_error("volunteer_id", "volunteer not found"))
    elif raw is not None and raw.merged_into is not None:
        problems[0].append(_error("volunteer_id", f"the volunteer was merged into {raw.merged_into}: log activities for that volunteer"))
    elif raw is not None and raw.erased:
        problems[0].append(_error("volunteer_id", "the volunteer was erased: no new activities can be logged for them"))
    elif volunteer is None:
        _missing(ctx, problems, "volunteer_id", "volunteer")
    return problems


def _project_problems(ctx: _Context, project_id: uuid.UUID) -> Problems:
    problems: Problems = ([], [])
    project = ctx.known.project(project_id)
    if project is None:
        _missing(ctx, problems, "project_id", "project")
    elif not ctx.known.visible(ctx.caller, project.organization_id):
        problems[0].append(_error("project_id", "project not found"))
    return problems


def _missing(ctx: _Context, problems: Problems, field_: str, what: str) -> None:
    if ctx.known.registry_down:
        problems[1].append(_error(field_, f"{what} could not be checked: the registry is unavailable; retry shortly"))
    else:
        problems[0].append(_error(field_, f"{what} not found"))


def _add(decision: Decision, problems: Problems) -> bool:
    """Add the problems to the decision; whether there were none."""
    decision.errors += problems[0]
    decision.unchecked += problems[1]
    return not problems[0] and not problems[1]


def _check(ctx: _Context, d: Entry, decision: Decision) -> None:
    if d.activity_type not in ctx.focus_areas:
        decision.errors.append(_error("activity_type", f"unknown activity type {d.activity_type!r} (see GET /activity-types)"))
    if d.date > ctx.today:
        decision.errors.append(_error("date", f"in the future (today is {ctx.today.isoformat()} in Asia/Phnom_Penh)"))
    if (volunteer := ctx.volunteers.get(d.volunteer_id)) is None:
        volunteer = ctx.volunteers[d.volunteer_id] = _volunteer_problems(ctx, d.volunteer_id)
    if (project := ctx.projects.get(d.project_id)) is None:
        project = ctx.projects[d.project_id] = _project_problems(ctx, d.project_id)
    volunteer_ok = _add(decision, volunteer)
    project_ok = _add(decision, project) and _check_project_dates(ctx, d, decision)
    if volunteer_ok and project_ok and not ctx.known.enrolled(d.volunteer_id, d.project_id, d.date):
        if ctx.known.registry_down:
            _missing(ctx, (decision.errors, decision.unchecked), "project_id", "the volunteer's enrolment")
        else:
            decision.errors.append(_error("project_id", f"the volunteer is not enrolled in this project on {d.date.isoformat()}"))
    if d.location_code not in ctx.known.locations:
        _missing(ctx, (decision.errors, decision.unchecked), "location_code", f"location {d.location_code}")


def _check_project_dates(ctx: _Context, d: Entry, decision: Decision) -> bool:
    project = ctx.known.projects[d.project_id]
    if project.start_date is not None and d.date < project.start_date:
        decision.errors.append(_error("date", f"before the project's start ({project.start_date.isoformat()})"))
    elif project.end_date is not None and d.date > project.end_date:
        decision.errors.append(_error("date", f"after the project's end ({project.end_date.isoformat()})"))
    else:
        return True
    return False


def _values(ctx: _Context, caller: CallerContext, d: Entry, activity_id: uuid.UUID, now: datetime) -> dict:
    project = ctx.known.projects[d.project_id]
    return {
        "id": activity_id, "volunteer_id": d.volunteer_id, "project_id": d.project_id, "program_id": project.program_id,
        "organization_id": project.organization_id,
        "volunteer_organization_id": ctx.known.volunteers[d.volunteer_id].organization_id,
        "submitter_organization_id": caller.organization_id, "activity_type": d.activity_type,
        "focus_area": ctx.focus_areas[d.activity_type], "project_focus_areas": list(project.focus_areas),
        "date": d.date, "hours": d.hours, "approved_hours": None, "location_code": d.location_code,
        "beneficiaries_female": d.female, "beneficiaries_male": d.male,
        "beneficiaries_other": d.other, "beneficiaries_children": d.children,
        "description": d.description, "evidence_urls": list(d.evidence_urls), "client_reference": d.client_reference,
        "status": "submitted", "status_reason": None, "decided_at": None, "version": 1, "revision": 1,
        "conflict": None, "created_at": now, "updated_at": now,
    }


def _too_many_hours(d: Entry, already: float) -> dict:
    return _error("hours", f"the volunteer's hours on {d.date.isoformat()} would total "
                           f"{already + d.hours:g} (at most {MAX_DAY_HOURS} a day; {already:g} already logged)")


def _new_ids(count: int) -> list[uuid.UUID]:
    """`count` random (version 4) UUIDs from one read of the system's randomness, not one read each."""
    raw = os.urandom(16 * count)
    return [uuid.UUID(bytes=raw[i:i + 16], version=4) for i in range(0, 16 * count, 16)]


async def _decide(session: AsyncSession, caller: CallerContext, registry: RegistryClient,
                  entries: Sequence[tuple[int, Entry]], exclude: Sequence[uuid.UUID] = ()) -> list[Decision]:
    refs = {d.client_reference for _, d in entries if d.client_reference is not None}
    existing = await repository.by_client_references(session, caller.organization_id, refs)
    needs = lookup.Needs.of(d for _, d in entries if d.client_reference not in existing)
    ctx = _Context(caller, await lookup.resolve(session, registry, needs),
                   await repository.focus_areas(session, {d.activity_type for _, d in entries}), local_today())
    keys = {(d.volunteer_id, d.date) for _, d in entries}
    await repository.lock_days(session, keys)
    totals = await repository.day_totals(session, keys, exclude=exclude)
    taken: dict[str, uuid.UUID] = {}
    now = utcnow()
    ids = iter(_new_ids(len(entries)))
    decisions = []
    for index, d in entries:
        decision = Decision(index)
        decisions.append(decision)
        ref = d.client_reference
        if ref is not None and (ref in existing or ref in taken):
            decision.duplicate_of = existing[ref] if ref in existing else taken[ref]
            continue
        _check(ctx, d, decision)
        key = (d.volunteer_id, d.date)
        already = totals.get(key, 0.0)
        if not decision.errors and not decision.unchecked and already + d.hours > MAX_DAY_HOURS + 1e-9:
            decision.errors.append(_too_many_hours(d, already))
        if decision.errors or decision.unchecked:
            continue
        totals[key] = already + d.hours
        decision.values = _values(ctx, caller, d, next(ids), now)
        if ref is not None:
            taken[ref] = decision.values["id"]
    return decisions


async def _write(session: AsyncSession, decisions: Sequence[Decision]) -> None:
    rows = [d.values for d in decisions if d.values is not None]
    await repository.insert_many(session, rows)
    await add_events(session, [submitted_event(row) for row in rows])


async def _record(session: AsyncSession, caller: CallerContext, registry: RegistryClient,
                  entries: Sequence[tuple[int, Entry]], dry_run: bool = False) -> list[Decision]:
    # Only a client reference can collide with a concurrent twin (ids are random): without one, no
    # savepoint is needed (two round trips fewer for a single entry).
    guarded = any(d.client_reference is not None for _, d in entries)
    # The volunteers first, before the days (the order a merge handler takes its locks in), and outside
    # the savepoint, which would release them: what `_decide` reads of them then is their state now.
    await registry_view.hold_volunteers(session, sorted({d.volunteer_id for _, d in entries}))
    for attempt in (1, 2):
        try:
            async with session.begin_nested() if guarded else nullcontext():
                decisions = await _decide(session, caller, registry, entries)
                if not dry_run:
                    await _write(session, decisions)
                    await session.flush()
            return decisions
        except IntegrityError:
            # A concurrent request stored one of these client references first; decide again.
            if attempt == 2:
                raise ProblemError(409, "concurrent requests are storing the same client references; retry",
                                   slug="concurrent-duplicate")
    raise AssertionError("unreachable")


# ---- one entry ---------------------------------------------------------------------------------

async def _record_one(session: AsyncSession, caller: CallerContext, registry: RegistryClient, d: Entry) -> Decision:
    """One entry on PostgreSQL in two statements: one reads what the rules need and locks the day, the
    other inserts the row and its event within the day's 24 hours (no savepoint: a twin with the same
    client reference makes the insert do nothing). A reference the projection lacks takes the general
    path, which asks the registry."""
    facts = await repository.one_entry_facts(session, caller.organization_id, d.volunteer_id, d.project_id, d.date,
                                             d.location_code, d.activity_type, d.client_reference)
    decision = Decision(0)
    if facts["duplicate_of"] is not None:
        decision.duplicate_of = uuid.UUID(facts["duplicate_of"])
        return decision
    known = lookup.known_from_facts(facts, d.volunteer_id, d.project_id, d.date, d.location_code)
    if known.misses(lookup.Needs.of([d])):
        [decision] = await _record(session, caller, registry, [(0, d)])
        return decision
    focus_areas = {} if facts["focus_area"] is None else {d.activity_type: facts["focus_area"]}
    ctx = _Context(caller, known, focus_areas, local_today())
    _check(ctx, d, decision)
    if decision.errors or decision.unchecked:
        return decision
    values = _values(ctx, caller, d, uuid.uuid4(), utcnow())
    already, inserted = await repository.insert_within_day(session, values, submitted_event(values), MAX_DAY_HOURS)
    if inserted:
        decision.values = values
    elif d.client_reference is not None and (twin := await repository.by_client_references(
            session, caller.organization_id, [d.client_reference])):
        decision.duplicate_of = twin[d.client_reference]  # a concurrent request stored it first
    else:
        decision.errors.append(_too_many_hours(d, already))
    return decision


async def record(session: AsyncSession, caller: CallerContext, registry: RegistryClient,
                 data: ActivityCreate) -> tuple[ActivityPublic, bool]:
    """The entry, and whether it was created now (False: the client reference named an existing one)."""
    if session.bind.dialect.name == "postgresql":
        decision = await _record_one(session, caller, registry, Entry.of(data))
    else:
        [decision] = await _record(session, caller, registry, [(0, Entry.of(data))])
    errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in decision.errors]
    if decision.unchecked and not errors:
        raise ProblemError(503, "the registry is unavailable to check this entry's references; retry shortly",
                           headers={"Retry-After": RETRY_AFTER_S},
                           errors=[{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in decision.unchecked])
    if errors:
        detail = "; ".join(f"{e['loc'][1]}: {e['msg']}" for e in errors[:5])
        raise ProblemError(422, detail, errors=errors)
    if decision.duplicate_of is not None:
        return ActivityPublic.of(await repository.get(session, decision.duplicate_of)), False
    return ActivityPublic.of(decision.values), True


async def check_correction(session: AsyncSession, caller: CallerContext, registry: RegistryClient,
                           data: ActivityCreate, activity_id: uuid.UUID) -> Decision:
    """The rules of a new entry applied to a correction of `activity_id` (its day locked, its own
    earlier hours not counted against the day); nothing is written. The volunteer's row is not held
    (`_record`): the entry is locked already, and a merge handler, holding the volunteer's row, waits
    for that lock to move it, so holding the row here would deadlock with it; the entry exists, so the
    handler moves it whichever commits first."""
    [decision] = await _decide(session, caller, registry, [(0, Entry.of(data))], exclude=[activity_id])
    return decision


# ---- batches -----------------------------------------------------------------------------------

def _parse(index: int, item: Any) -> tuple[Entry | None, Decision | None]:
    if (entry := plain_entry(item)) is not None:
        return entry, None
    if not isinstance(item, dict):
        return None, Decision(index, [{"loc": [], "msg": "an item must be a JSON object"}])
    try:
        return Entry.of(ActivityCreate.model_validate(item)), None
    except ValidationError as exc:
        return None, Decision(index, validation_errors(list(exc.errors())))


async def record_batch(session: AsyncSession, caller: CallerContext, registry: RegistryClient,
                       items: Sequence[Any], dry_run: bool) -> dict:
    """Good items taken, bad ones reported, by index (§4 summary, the shape of `BatchSummary`, built as
    plain data: a model per item costs more than deciding it); a re-sent batch creates nothing twice."""
    parsed, refused = [], []
    for index, item in enumerate(items):
        data, decision = _parse(index, item)
        if data is not None:
            parsed.append((index, data))
        else:
            refused.append(decision)
    decisions = sorted([*refused, *(await _record(session, caller, registry, parsed, dry_run) if parsed else [])],
                       key=lambda d: d.index)
    counts = {"created": 0, "updated": 0, "ignored": 0, "errors": 0}
    results = []
    for d in decisions:
        if d.errors or d.unchecked:
            counts["errors"] += 1
            results.append({"index": d.index, "status": "error", "errors": d.errors + d.unchecked})
        elif d.duplicate_of is not None:
            counts["ignored"] += 1
            results.append({"index": d.index, "status": "duplicate", "id": d.duplicate_of})
        else:
            counts["created"] += 1
            results.append({"index": d.index, "status": "created"} if dry_run else
                           {"index": d.index, "status": "created", "id": d.values["id"]})
    return {"dry_run": dry_run, **counts, "items": results}


# ---- reading -----------------------------------------------------------------------------------

async def get_visible(session: AsyncSession, scope: Visibility, activity_id: uuid.UUID) -> Activity:
    row = await repository.get(session, activity_id)
    if row is None or not scope.can_see(row):
        raise NotFound("activity")
    return row


async def search(session: AsyncSession, scope: Visibility, limit: int, cursor: str | None,
                 filters: repository.ActivityFilters) -> dict:
    rows = await repository.rows(session, paginate(repository.list_query(scope.orgs, filters), Activity, limit, cursor))
    more, rows = len(rows) > limit, rows[:limit]
    return {"items": [ActivityPublic.of(r) for r in rows],
            "next_cursor": encode_cursor(rows[-1].updated_at, rows[-1].id) if more and rows else None}


# ---- following the registry --------------------------------------------------------------------

async def follow_merge(session: AsyncSession, duplicate_id: uuid.UUID, survivor_id: uuid.UUID) -> None:
    """Hand the duplicate's activities to the survivor (or to whoever the survivor was merged into since).

    The 24-hour rule is checked again on the survivor's days: a day now over 24 hours keeps every entry
    (statistics and the verifiers decide), each of its entries says so in `conflict`.
    """
    survivor_id = await registry_view.survivor_of(session, survivor_id)
    survivor = await session.get(VolunteerView, survivor_id)
    moved = await repository.of_volunteer(session, duplicate_id, lock=True)
    if not moved:
        return
    now = utcnow()
    for row in moved:
        row.volunteer_id = survivor_id
        if survivor is not None and survivor.organization_id is not None:
            row.volunteer_organization_id = survivor.organization_id
        row.revision += 1
        row.updated_at = now
    await session.flush()
    days = {row.date for row in moved}
    await repository.lock_days(session, {(survivor_id, day) for day in days})
    over = {day for (_, day), total in
            (await repository.day_totals(session, {(survivor_id, day) for day in days})).items() if total > MAX_DAY_HOURS + 1e-9}
    for row in await repository.of_volunteer(session, survivor_id, lock=True):
        if row.date in over and row.status in COUNTING:
            row.conflict = (f"after merging volunteer {duplicate_id} into {survivor_id}, this volunteer's entries "
                            f"on {row.date.isoformat()} total more than {MAX_DAY_HOURS} hours")
            row.updated_at = now
    await add_events(session, [activity_event(ACTIVITY_REASSIGNED, row) for row in moved])


async def follow_erasure(session: AsyncSession, volunteer_id: uuid.UUID) -> None:
    """The volunteer was erased: their activities stay for statistics, without the free text about them."""
    await repository.forget_free_text(session, volunteer_id, utcnow())


async def follow_transfer(session: AsyncSession, volunteer_id: uuid.UUID, organization_id: uuid.UUID) -> None:
    """The volunteer is managed by `organization_id` now: their entries are visible to its tree."""
    await repository.set_volunteer_organization(session, volunteer_id, organization_id, utcnow())
