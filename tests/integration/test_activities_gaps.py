"""Activities rules an audit found untested (issue 16): merge chains arriving out of order and merges
delivered twice (on a rolled-back session: only the handlers can see events in an order the registry
never sends), an assessment or an entry written while a merge or an erasure commits, and a merge or an
erasure applied while an entry is written, the registry's answer stored beside the consumer or a
twin request (two real transactions, PostgreSQL), and through the gateway entries logged while their
volunteer is merged, the enrolment's own dates, client references of two organisations, the 24-hour rule across
projects, voiding a submitted entry, one registry call per request, a registry that hangs, and Phnom
Penh's today."""
from __future__ import annotations

import asyncio
import itertools
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities import service
from services.activities.activities.models import Activity
from services.activities.assessments import service as assessments
from services.activities.assessments.models import Assessment, AssessmentCreate
from services.activities.migrations import MIGRATIONS as ACTIVITIES_MIGRATIONS
from services.activities.registry_view import repository as registry_view
from services.activities.registry_view.client import RegistryClient
from services.activities.registry_view.models import (
    FETCHED, EnrollmentView, OrganizationView, ProgramView, ProjectView, VolunteerView,
)
from services.activities.scope import visibility
from services.registry.internal.models import (
    EnrollmentFacts, LocationFacts, OrganizationFacts, ProgramFacts, ProjectFacts, References, VolunteerFacts,
)
from shared import events as ev
from shared.caller import SCOPES, CallerContext
from shared.db import make_sessionmaker
from shared.errors import ProblemError, lost_a_race
from shared.outbox import OutboxRecord
from tests.api import assert_problem, walk
from tests.conftest import eventually
from tests.factories import create_enrollment, create_project, national_scope, org_key, register
from tests.harness import database_mode, stack_of_its_own, unique
from tests.integration.activity_factories import LOGGER, activity_body, log, setting
from tests.integration.test_activities import probe
from tests.integration.test_activities_rules_db import NATIONAL, T0, apply, entry, known_setting, volunteer

SOFT = {"communication": 4, "teamwork": 5, "leadership": 3, "problem_solving": 2, "critical_thinking": 1,
        "self_confidence": 5}


# ---- following merges, on a rolled-back session -------------------------------------------------

async def _outbox_size(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(OutboxRecord))).scalar_one()


async def test_a_merge_chain_arriving_out_of_order_ends_on_the_last_survivor(activities_session: AsyncSession):
    """A merged into B, then B into S; the second merge's event arrives first (they are keyed by the
    duplicate, so they can sit on different partitions). A's activity and assessment end on S, in S's
    organisation, and the first merge delivered again changes nothing."""
    session = activities_session
    a, project = await known_setting(session)
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)  # everything needed is known: never asked
    try:
        activity, _ = await service.record(session, NATIONAL, down, entry(a, project))
        assessment = await assessments.record_assessment(session, down, national_scope(), AssessmentCreate(
            volunteer_id=a, instrument="soft-skills-v1", phase="baseline", taken_on=date(2026, 3, 2), scores=SOFT))
    finally:
        await down.close()
    b, s, survivors_org = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply(session, ev.ORGANIZATION_CREATED, ev.OrganizationChanged(id=survivors_org, kind="ngo"), T0)
    await apply(session, ev.VOLUNTEER_REGISTERED, volunteer(b, survivors_org), T0)
    await apply(session, ev.VOLUNTEER_REGISTERED, volunteer(s, survivors_org), T0)

    await apply(session, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=s, duplicate_id=b), T0 + timedelta(seconds=2))
    await apply(session, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=b, duplicate_id=a), T0 + timedelta(seconds=1))

    moved = await session.get(Activity, activity.id)
    await session.refresh(moved)
    await session.refresh(assessment)
    assert (moved.volunteer_id, moved.volunteer_organization_id, moved.revision) == (s, survivors_org, 2)
    assert (assessment.volunteer_id, assessment.organization_id) == (s, survivors_org)
    survivors_view = await visibility(CallerContext("test-org", survivors_org, frozenset(SCOPES)), session)
    assert (await assessments.get_assessment(session, survivors_view, assessment.id)).id == assessment.id

    # The same merge event again (a redelivery the runtime's dedupe did not catch): no second move.
    published = await _outbox_size(session)
    await apply(session, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=b, duplicate_id=a), T0 + timedelta(seconds=1))
    await session.refresh(moved)
    await session.refresh(assessment)
    assert (moved.volunteer_id, moved.revision, assessment.volunteer_id) == (s, 2, s)
    assert await _outbox_size(session) == published  # no second vmc.activity.reassigned


async def test_a_merge_chain_in_order_ends_on_the_last_survivor_too(activities_session: AsyncSession):
    session = activities_session
    a, project = await known_setting(session)
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)
    try:
        assessment = await assessments.record_assessment(session, down, national_scope(), AssessmentCreate(
            volunteer_id=a, instrument="soft-skills-v1", phase="midline", taken_on=date(2026, 3, 2), scores=SOFT))
    finally:
        await down.close()
    b, s = uuid.uuid4(), uuid.uuid4()
    org = assessment.organization_id
    for v in (b, s):
        await apply(session, ev.VOLUNTEER_REGISTERED, volunteer(v, org), T0)
    await apply(session, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=b, duplicate_id=a), T0 + timedelta(seconds=1))
    await apply(session, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=s, duplicate_id=b), T0 + timedelta(seconds=2))
    await session.refresh(assessment)
    assert assessment.volunteer_id == s
    current = (await session.execute(select(Assessment).where(Assessment.volunteer_id == a))).scalars().all()
    assert current == []


# ---- a write in flight beside a handler: two committed transactions ----------------------------

async def _lock_waits(engine) -> int:
    async with engine.connect() as connection:
        return (await connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ))).scalar_one()


only_postgresql = pytest.mark.skipif(database_mode() != "postgresql",
                                     reason="SQLite has one writer: a write cannot be in flight beside a handler")


@asynccontextmanager
async def _committed_setting(migrated_databases) -> AsyncIterator[tuple]:
    """A duplicate enrolled in a project and a survivor, committed (a handler and a write in two real
    transactions must see them), all deleted afterwards; yields (maker, engine, duplicate, survivor, project)."""
    engine = await migrated_databases.engine("activities", ACTIVITIES_MIGRATIONS)
    maker = make_sessionmaker(engine)
    async with maker() as setup, setup.begin():
        duplicate, project = await known_setting(setup)
        org = (await setup.get(VolunteerView, duplicate)).organization_id
        survivor = uuid.uuid4()
        await apply(setup, ev.VOLUNTEER_REGISTERED, volunteer(survivor, org), T0)
    try:
        yield maker, engine, duplicate, survivor, project
    finally:
        people = [duplicate, survivor]
        async with maker() as cleanup, cleanup.begin():
            written = (await cleanup.execute(select(Activity.id).where(Activity.volunteer_id.in_(people)))).scalars()
            await cleanup.execute(delete(OutboxRecord).where(OutboxRecord.key.in_([str(i) for i in written])))
            await cleanup.execute(delete(Activity).where(Activity.volunteer_id.in_(people)))
            await cleanup.execute(delete(Assessment).where(Assessment.volunteer_id.in_(people)))
            await cleanup.execute(delete(EnrollmentView).where(EnrollmentView.volunteer_id.in_(people)))
            await cleanup.execute(delete(VolunteerView).where(VolunteerView.id.in_(people)))
            await cleanup.execute(delete(ProjectView).where(ProjectView.id == project))
            await cleanup.execute(delete(OrganizationView).where(OrganizationView.id == org))


async def _waits_for(engine, work) -> tuple[bool, asyncio.Task]:
    """Start `work` in a task of its own; whether it waits on a lock (rather than finishing), and the task."""
    task = asyncio.create_task(work())
    await eventually(lambda: task.done() or _lock_waits(engine), what="the work done or waiting on a lock")
    return not task.done(), task


@only_postgresql
async def test_an_assessment_in_flight_when_a_merge_commits_does_not_stay_on_the_duplicate(migrated_databases):
    """Two real transactions (committed, then deleted): the merge handler has updated the duplicate's row
    and not committed yet while an assessment of the duplicate is being written. Whichever goes first,
    nothing may be left on the duplicate (here: the write waits, then is told of the merge)."""
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)
    try:
        async with _committed_setting(migrated_databases) as (maker, engine, duplicate, survivor, _):
            async def assess() -> int:
                async with maker() as writing, writing.begin():
                    try:
                        await assessments.record_assessment(writing, down, national_scope(), AssessmentCreate(
                            volunteer_id=duplicate, instrument="soft-skills-v1", phase="endline", taken_on=date(2026, 3, 2),
                            scores=SOFT))
                        return 201
                    except ProblemError as problem:
                        assert "merged" in problem.detail, problem.detail
                        return problem.status

            async with maker() as merging, merging.begin():
                await apply(merging, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=survivor, duplicate_id=duplicate),
                            T0 + timedelta(seconds=1))
                waited, writer = await _waits_for(engine, assess)
            status = await writer
            assert (waited, status) == (True, 422)
            async with maker() as reading:
                left = (await reading.execute(select(Assessment).where(Assessment.volunteer_id == duplicate))).scalars().all()
            assert left == []
    finally:
        await down.close()


async def _log_one(session: AsyncSession, registry: RegistryClient, body) -> tuple[int, str]:
    """POST /activities as the service decides it (on PostgreSQL the two-statement path): status, id or why."""
    try:
        public, _ = await service.record(session, NATIONAL, registry, body)
        return 201, str(public.id)
    except ProblemError as problem:
        return problem.status, problem.detail


async def _log_in_a_batch(session: AsyncSession, registry: RegistryClient, body) -> tuple[int, str]:
    """The same entry as the one item of POST /activities/batch (the general path)."""
    [item] = (await service.record_batch(session, NATIONAL, registry, [body.model_dump(mode="json")], False))["items"]
    if item["status"] == "created":
        return 201, str(item["id"])
    return 422, "; ".join(e["msg"] for e in item["errors"])


WRITES = {"alone": _log_one, "in a batch": _log_in_a_batch}


def _registry_event(kind: str, duplicate: uuid.UUID, survivor: uuid.UUID) -> tuple[str, ev.Payload]:
    if kind == "merge":
        return ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=survivor, duplicate_id=duplicate)
    return ev.VOLUNTEER_ERASED, ev.VolunteerErased(id=duplicate)


@only_postgresql
@pytest.mark.parametrize("kind", ["merge", "erasure"])
@pytest.mark.parametrize("path", list(WRITES))
async def test_an_entry_decided_while_a_merge_or_erasure_commits_waits_and_is_refused(migrated_databases, path, kind):
    """The handler has flagged the duplicate (merged, or erased) and not committed yet when an entry for
    it is logged: the write waits for the handler, then reads the flag and refuses the entry (before:
    it read the volunteer as live, was acknowledged, and stayed on the merged-away or erased volunteer)."""
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)
    try:
        async with _committed_setting(migrated_databases) as (maker, engine, duplicate, survivor, project):
            async def write() -> tuple[int, str]:
                async with maker() as writing, writing.begin():
                    return await WRITES[path](writing, down, entry(duplicate, project, description="in flight"))

            async with maker() as handling, handling.begin():
                await apply(handling, *_registry_event(kind, duplicate, survivor), T0 + timedelta(seconds=1))
                waited, writer = await _waits_for(engine, write)
            status, detail = await writer
            assert (waited, status) == (True, 422), detail
            assert ("merged into" if kind == "merge" else "erased") in detail
            async with maker() as reading:
                left = (await reading.execute(select(Activity).where(Activity.volunteer_id.in_(
                    [duplicate, survivor])))).scalars().all()
            assert left == []
    finally:
        await down.close()


@only_postgresql
@pytest.mark.parametrize("kind", ["merge", "erasure"])
@pytest.mark.parametrize("path", list(WRITES))
async def test_a_merge_or_erasure_arriving_while_an_entry_is_written_waits_and_then_follows_it(migrated_databases, path, kind):
    """The entry is written and not committed yet when the merge (or erasure) is applied: the handler
    waits for it, then moves it to the survivor (or clears its free text), counted once (before: the
    handler did not see it and it stayed on the merged-away duplicate, or kept its description)."""
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)
    try:
        async with _committed_setting(migrated_databases) as (maker, engine, duplicate, survivor, project):
            async def handle() -> None:
                async with maker() as handling, handling.begin():
                    await apply(handling, *_registry_event(kind, duplicate, survivor), T0 + timedelta(seconds=1))

            async with maker() as writing, writing.begin():
                status, written = await WRITES[path](writing, down, entry(duplicate, project, description="in flight"))
                assert status == 201, written
                waited, handler = await _waits_for(engine, handle)
            await handler
            assert waited
            async with maker() as reading:
                rows = (await reading.execute(select(Activity).where(Activity.volunteer_id.in_(
                    [duplicate, survivor])))).scalars().all()
            assert [str(row.id) for row in rows] == [written]
            if kind == "merge":
                assert (rows[0].volunteer_id, rows[0].revision) == (survivor, 2)
            else:
                assert (rows[0].volunteer_id, rows[0].description) == (duplicate, None)
    finally:
        await down.close()

# ---- storing the registry's answer beside the consumer and a twin request (PostgreSQL) ----------

class _Registry:
    """The registry's internal route as this service's client sees it, answering `answer` (built with the
    registry's own model), each request once `gate` lets it (to line two requests up)."""

    def __init__(self, answer: References, gate: asyncio.Barrier | None = None):
        self.answer, self.gate, self.asked = answer.model_dump(mode="json"), gate, 0

    async def references(self, volunteer_ids, project_ids, location_codes) -> dict:
        self.asked += 1
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 10)
        return self.answer


def _answer(org: uuid.UUID, program: uuid.UUID, project: uuid.UUID, v: uuid.UUID, enrolment: uuid.UUID) -> References:
    return References(
        volunteers=[VolunteerFacts(id=v, organization_id=org, erased=False, merged_into=None)],
        projects=[ProjectFacts(id=project, program_id=program, organization_id=org, focus_areas=[],
                               start_date=date(2026, 1, 1), end_date=None)],
        programs=[ProgramFacts(id=program, code="T")], organizations=[OrganizationFacts(id=org, parent_id=None, national=False)],
        enrollments=[EnrollmentFacts(id=enrolment, volunteer_id=v, project_id=project, started_on=date(2026, 1, 1),
                                     ended_on=None)],
        locations=[LocationFacts(code="12", level="province", parent_code=None)],
    )


@asynccontextmanager
async def _registry_records(migrated_databases) -> AsyncIterator[tuple]:
    """An organisation and a programme applied from events and committed; the ids of a project, a
    volunteer and an enrolment left for the test to make known; everything deleted afterwards."""
    engine = await migrated_databases.engine("activities", ACTIVITIES_MIGRATIONS)
    maker = make_sessionmaker(engine)
    org, program, project, v, enrolment = (uuid.uuid4() for _ in range(5))
    async with maker() as setup, setup.begin():
        await apply(setup, ev.ORGANIZATION_CREATED, ev.OrganizationChanged(id=org, kind="ngo"), T0)
        await apply(setup, ev.PROGRAM_CREATED, ev.ProgramCreated(id=program, code="T"), T0)
        await apply(setup, ev.LOCATIONS_IMPORTED,
                    ev.LocationsImported(locations=[ev.LocationRecord(code="12", level="province")]), T0)
    try:
        yield maker, engine, org, program, project, v, enrolment
    finally:
        async with maker() as cleanup, cleanup.begin():
            written = (await cleanup.execute(select(Activity.id).where(Activity.volunteer_id == v))).scalars()
            await cleanup.execute(delete(OutboxRecord).where(OutboxRecord.key.in_([str(i) for i in written])))
            await cleanup.execute(delete(Activity).where(Activity.volunteer_id == v))
            await cleanup.execute(delete(EnrollmentView).where(EnrollmentView.id == enrolment))
            await cleanup.execute(delete(VolunteerView).where(VolunteerView.id == v))
            await cleanup.execute(delete(ProjectView).where(ProjectView.id == project))
            await cleanup.execute(delete(ProgramView).where(ProgramView.id == program))
            await cleanup.execute(delete(OrganizationView).where(OrganizationView.id == org))


def _project_created(org: uuid.UUID, program: uuid.UUID, project: uuid.UUID) -> ev.ProjectChanged:
    return ev.ProjectChanged(id=project, program_id=program, organization_id=org, start_date=date(2026, 1, 1))


@only_postgresql
async def test_an_answer_stored_while_the_consumer_applies_the_same_records_in_another_order_is_no_500(migrated_databases):
    """Read-your-writes: an entry for a volunteer and project created a moment ago misses the projection,
    and the registry's answer is stored (projects, then volunteers) while the consumer applies the same
    records' events in the order they came (the volunteer, then the project). Each waits for a row the
    other inserted: a deadlock, whose victim PostgreSQL picks. The entry is taken all the same (before:
    the request was the victim, a 500 "deadlock detected"); a consumer that loses applies its batch again."""
    async with _registry_records(migrated_databases) as (maker, engine, org, program, project, v, enrolment):
        registry = _Registry(_answer(org, program, project, v, enrolment))

        async def log_entry() -> tuple[int, str]:
            async with maker() as writing, writing.begin():
                return await _log_one(writing, registry, entry(v, project))

        writer = None
        try:
            async with maker() as consuming, consuming.begin():
                await apply(consuming, ev.VOLUNTEER_REGISTERED, volunteer(v, org), T0)
                waited, writer = await _waits_for(engine, log_entry)
                assert waited and registry.asked == 1  # storing the answer's volunteer waits for the consumer's
                await apply(consuming, ev.PROJECT_CREATED, _project_created(org, program, project), T0)
        except DBAPIError as exc:
            assert lost_a_race(exc), exc  # the consumer was the victim: its runtime applies the events again
        assert writer is not None
        status, detail = await writer
        assert status == 201, detail
        async with maker() as reading:
            [row] = (await reading.execute(select(Activity).where(Activity.volunteer_id == v))).scalars().all()
        assert (row.project_id, row.organization_id) == (project, org)


@only_postgresql
async def test_two_entries_of_a_known_volunteer_storing_the_same_answer_at_once_are_both_taken(migrated_databases):
    """Two entries (other days) of a volunteer the projection knows, whose enrolment it does not know yet:
    both hold the volunteer's row (share) and ask the registry, then store its answer at once. Neither
    writes the volunteer's row again (an upsert locks the row it meets: each would wait for the other's
    share, a deadlock and a 500 before); both entries are taken."""
    async with _registry_records(migrated_databases) as (maker, engine, org, program, project, v, enrolment):
        async with maker() as setup, setup.begin():
            await apply(setup, ev.PROJECT_CREATED, _project_created(org, program, project), T0)
            await apply(setup, ev.VOLUNTEER_REGISTERED, volunteer(v, org), T0)
        registry = _Registry(_answer(org, program, project, v, enrolment), gate=asyncio.Barrier(2))

        async def log_entry(on: date) -> tuple[int, str]:
            async with maker() as writing, writing.begin():
                return await _log_one(writing, registry, entry(v, project, date=on))

        answers = await asyncio.gather(log_entry(date(2026, 3, 2)), log_entry(date(2026, 3, 3)))
        assert [status for status, _ in answers] == [201, 201], answers
        assert registry.asked == 2


@only_postgresql
@pytest.mark.parametrize("kind", ["registration", "erasure"])
async def test_an_event_meeting_the_row_a_request_is_storing_is_applied_not_refused(migrated_databases, kind):
    """The consumer applies a volunteer's registration (or erasure) while a request, which asked the
    registry about that volunteer, has inserted its row and not committed: the handler waits for it and
    then applies the event over the fetched row (before: a plain insert, a unique violation once the
    request committed, the consumer's batch failed and applied again one event at a time)."""
    async with _registry_records(migrated_databases) as (maker, engine, org, program, project, v, enrolment):
        async def handle() -> None:
            async with maker() as consuming, consuming.begin():
                if kind == "registration":
                    await apply(consuming, ev.VOLUNTEER_REGISTERED, volunteer(v, org), T0)
                else:
                    await apply(consuming, ev.VOLUNTEER_ERASED, ev.VolunteerErased(id=v), T0)

        async with maker() as requesting, requesting.begin():
            await registry_view.store_fetched(requesting, VolunteerView, [
                {"id": v, "organization_id": org, "erased": False, "merged_into": None, "event_time": FETCHED}], ["id"])
            waited, handler = await _waits_for(engine, handle)
        await handler
        assert waited
        async with maker() as reading:
            row = await reading.get(VolunteerView, v)
        assert (row.organization_id, row.erased) == (org, kind == "erasure")
        if kind == "registration":
            assert row.event_time == T0


# ---- through the gateway ------------------------------------------------------------------------

async def test_entries_logged_while_the_registry_merges_their_volunteer_all_end_on_the_survivor(admin: httpx.AsyncClient):
    """Through the stack: clients keep logging entries (alone and in batches) for a volunteer while the
    registry merges them into another, until each is told of the merge. Every acknowledged entry ends on
    the survivor, once; none stays on the duplicate; every refusal says why (the merge), none is a 5xx."""
    s = await setting(admin)
    duplicate = (await register(admin, organization_id=s.org["id"]))["id"]
    await create_enrollment(admin, duplicate, s.project["id"])
    # Entries of 0.1 h cycling over the enrolment's days: far from 24 hours a day however many are
    # written before the merge reaches activities (a second or more; hundreds of entries a second).
    days = itertools.cycle([date(2026, 2, 1) + timedelta(days=n) for n in range(300)])
    acknowledged: list[str] = []
    refused: list[str] = []

    def body() -> dict:
        return activity_body(s, volunteer_id=duplicate, date=next(days).isoformat(), hours=0.1)

    async def write(batch: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until told of the merge
            if batch:
                answer = await admin.post("/activities/batch", json={"items": [body() for _ in range(batch)]})
                assert answer.status_code == 200, answer.text
                items = answer.json()["items"]
                acknowledged.extend(i["id"] for i in items if i["status"] == "created")
                refused.extend(e["msg"] for i in items for e in i.get("errors", []))
            else:
                answer = await log(admin, body())
                assert answer.status_code in (201, 422), answer.text
                if answer.status_code == 201:
                    acknowledged.append(answer.json()["id"])
                else:
                    refused.extend(e["msg"] for e in answer.json()["errors"])
            if refused and len(acknowledged) >= 8:
                return
        raise AssertionError("the merge did not reach activities within 60 s")

    async def merge() -> None:
        await eventually(lambda: len(acknowledged) >= 8, what="entries logged before the merge")
        merged = await admin.post(f"/volunteers/{s.volunteer['id']}/merge", json={"duplicate_id": duplicate})
        assert merged.status_code == 200, merged.text

    await asyncio.gather(merge(), write(0), write(0), write(3), write(5))
    assert refused and all("merged into" in msg for msg in refused), refused
    assert len(set(acknowledged)) == len(acknowledged)

    async def all_moved() -> bool:
        return not await walk(admin, "/activities", volunteer_id=duplicate)

    await eventually(all_moved, what="the duplicate's entries moved to the survivor")
    on_survivor = [a["id"] for a in await walk(admin, "/activities", volunteer_id=s.volunteer["id"])]
    assert sorted(on_survivor) == sorted(acknowledged)


async def test_only_days_the_enrolment_covers_take_entries(admin: httpx.AsyncClient, stack):
    s = await setting(admin)  # the project runs from 2026-01-15, the enrolment from 2026-02-01
    assert_problem(await log(admin, activity_body(s, date="2026-01-20")), 422, ["body", "project_id"], says="not enrolled")
    [enrolment] = (await admin.get(f"/volunteers/{s.volunteer['id']}/enrollments")).json()["items"]
    ended = await admin.post(f"/enrollments/{enrolment['id']}/end", json={"ended_on": "2026-03-31"})
    assert ended.status_code == 200, ended.text

    async def ended_in_the_view() -> bool:
        # Activities' copy of the registry. A dry run's refusal is no proof: a copy without the enrolment asks
        # the registry (which knows the end), while a copy holding the start but not yet the end asks nobody
        # and takes 2026-04-02 (CI met this once).
        rows = await stack.query("activities", "SELECT id, ended_on FROM registry_enrollments")
        return [str(e) for i, e in rows if str(i).replace("-", "") == enrolment["id"].replace("-", "")] == ["2026-03-31"]

    await eventually(ended_in_the_view, what="the enrolment's end reaching activities")
    assert_problem(await log(admin, activity_body(s, date="2026-04-02")), 422, ["body", "project_id"], says="not enrolled")
    for last_days in ("2026-03-31", "2026-03-30"):
        answer = await log(admin, activity_body(s, date=last_days))
        assert answer.status_code == 201, answer.text
    assert [a["date"] for a in await walk(admin, "/activities", volunteer_id=s.volunteer["id"])] == ["2026-03-31", "2026-03-30"]


async def test_a_client_reference_is_unique_per_organisation_only(admin: httpx.AsyncClient, stack):
    first, second = await setting(admin), await setting(admin)
    reference = unique("shared-ref")
    async with org_key(stack, admin, first.org["id"], LOGGER) as as_first, \
            org_key(stack, admin, second.org["id"], LOGGER) as as_second:
        mine = await log(as_first, activity_body(first, client_reference=reference))
        theirs = await log(as_second, activity_body(second, client_reference=reference))
        assert mine.status_code == theirs.status_code == 201, (mine.text, theirs.text)
        assert mine.json()["id"] != theirs.json()["id"]
        for client, s, made in ((as_first, first, mine.json()), (as_second, second, theirs.json())):
            resent = await client.post("/activities/batch", json={"items": [activity_body(s, client_reference=reference)]})
            assert resent.status_code == 200, resent.text
            assert resent.json()["items"] == [{"index": 0, "status": "duplicate", "id": made["id"]}]
            again = await log(client, activity_body(s, client_reference=reference))
            assert (again.status_code, again.json()["id"]) == (200, made["id"])
    for s in (first, second):
        assert len(await walk(admin, "/activities", volunteer_id=s.volunteer["id"])) == 1


async def test_a_volunteers_day_holds_24_hours_across_projects(admin: httpx.AsyncClient):
    s = await setting(admin)
    other = await create_project(admin, s.org["id"], program_id=s.project["program_id"])
    await create_enrollment(admin, s.volunteer["id"], other["id"])
    assert (await log(admin, activity_body(s, date="2026-04-01", hours=20))).status_code == 201
    problem = assert_problem(await log(admin, activity_body(s, project_id=other["id"], date="2026-04-01", hours=4.5)), 422,
                             ["body", "hours"])
    assert "24" in problem["detail"]
    assert (await log(admin, activity_body(s, project_id=other["id"], date="2026-04-01", hours=4))).status_code == 201
    item = await probe(admin, activity_body(s, project_id=other["id"], date="2026-04-01", hours=0.5))
    assert [e["loc"] for e in item["errors"]] == [["hours"]], item


async def test_a_submitted_entry_can_be_voided_and_stops_counting(admin: httpx.AsyncClient):
    s = await setting(admin)
    made = (await log(admin, activity_body(s, date="2026-04-03", hours=20))).json()
    assert_problem(await admin.post(f"/activities/{made['id']}/void", json={}), 422, ["body", "reason"])
    voided = await admin.post(f"/activities/{made['id']}/void", json={"reason": "logged for the wrong day"})
    assert voided.status_code == 200, voided.text
    assert (voided.json()["status"], voided.json()["approved_hours"], voided.json()["version"]) == ("voided", None, 1)
    again = await admin.post(f"/activities/{made['id']}/void", json={"reason": "again"})
    assert (again.status_code, again.json()["updated_at"]) == (200, voided.json()["updated_at"])
    assert_problem(await admin.post(f"/activities/{made['id']}/verify", json={}), 409)
    assert_problem(await admin.post(f"/activities/{made['id']}/reject", json={"reason": "x"}), 409)
    assert (await admin.get(f"/activities/{made['id']}")).json()["status"] == "voided"
    # Its 20 hours no longer fill the day.
    assert (await log(admin, activity_body(s, date="2026-04-03", hours=24))).status_code == 201


async def _internal_calls(stack) -> float:
    """How many times the registry has answered its internal references route (its /metrics)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(stack.urls["registry"] + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vmc_http_requests_total{") and "internal/references" in line)


async def test_a_batch_with_many_misses_asks_the_registry_once(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    others = [await register(admin, organization_id=s.org["id"]) for _ in range(3)]
    for v in others:
        await create_enrollment(admin, v["id"], s.project["id"])
    before = await _internal_calls(stack)
    # A volunteer nobody registered is a miss whatever events activities has applied meanwhile.
    items = [activity_body(s, volunteer_id=v["id"], date=day) for v in [s.volunteer, *others]
             for day in ("2026-03-02", "2026-03-03")] + [activity_body(s, volunteer_id=str(uuid.uuid4()))]
    answer = await admin.post("/activities/batch", json={"items": items})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["created"], answer.json()["errors"]) == (8, 1), answer.json()

    async def asked() -> bool:
        return await _internal_calls(stack) > before

    await eventually(asked, what="the registry's count of internal calls")
    assert await _internal_calls(stack) == before + 1


# ---- a registry that accepts connections and answers nothing -----------------------------------

REGISTRY_TIMEOUT_S = 1.0


@pytest.fixture
def hanging_registry_stack():
    """A stack of its own (its registry is frozen; the session's stack must not be), with a 1 s timeout."""
    with stack_of_its_own(VMC_ACTIVITIES_REGISTRY_TIMEOUT_S=str(REGISTRY_TIMEOUT_S)) as stack:
        try:
            yield stack
        finally:
            # Killed, not stopped (a frozen registry would not stop; a graceful stop of each part in turn
            # took 20 s here): nothing of this stack is needed afterwards.
            for name in list(stack.procs):
                stack.stop_part(name, kill=True)


async def _timed(request) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = await request
    return answer, time.monotonic() - started


async def test_a_registry_that_hangs_gives_a_503_within_the_timeout(hanging_registry_stack):
    stack = hanging_registry_stack
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {stack.admin_key}"},
                                 timeout=30) as admin:
        s = await setting(admin)
        assert (await log(admin, activity_body(s))).status_code == 201  # now known to activities
        unknown = str(uuid.uuid4())
        stack.procs["registry"].send_signal(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
        try:
            known, _ = await _timed(log(admin, activity_body(s, date="2026-03-11")))
            assert known.status_code == 201, known.text
            refused, took = await _timed(log(admin, activity_body(s, volunteer_id=unknown, date="2026-03-12")))
            problem = assert_problem(refused, 503, ["body", "volunteer_id"])
            assert "retry" in problem["detail"] and refused.headers["Retry-After"]
            assert took < REGISTRY_TIMEOUT_S + 1, took
            assessed, took = await _timed(admin.post("/assessments", json={
                "volunteer_id": unknown, "instrument": "soft-skills-v1", "phase": "baseline", "taken_on": "2026-03-02",
                "scores": SOFT}))
            assert "retry" in assert_problem(assessed, 503)["detail"] and took < REGISTRY_TIMEOUT_S + 1, took
        finally:
            stack.procs["registry"].send_signal(signal.SIGCONT)
        # Back: the volunteer nobody registered is now a plain "not found".
        assert_problem(await log(admin, activity_body(s, volunteer_id=unknown, date="2026-03-12")), 422,
                       ["body", "volunteer_id"], says="not found")


async def test_phnom_penhs_today_is_accepted_and_its_tomorrow_is_not(admin: httpx.AsyncClient):
    """Between 17:00 and 24:00 UTC this tells Phnom Penh's date from UTC's; tests/unit/test_activity_rules
    pins the instant."""
    s = await setting(admin, end_date=None)
    today = service.local_today()
    assert_problem(await log(admin, activity_body(s, date=(today + timedelta(days=1)).isoformat())), 422, ["body", "date"],
                   says="Asia/Phnom_Penh")
    answer = await log(admin, activity_body(s, date=today.isoformat()))
    assert answer.status_code == 201, answer.text
