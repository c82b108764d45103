"""Activities rules an audit found untested (issue 16): merge chains arriving out of order and merges
delivered twice (on a rolled-back session: only the handlers can see events in an order the registry
never sends), an assessment written while a merge commits (two real transactions), and through the
gateway the enrolment's own dates, client references of two organisations, the 24-hour rule across
projects, voiding a submitted entry, one registry call per request, a registry that hangs, and Phnom
Penh's today."""
from __future__ import annotations

import asyncio
import signal
import time
import uuid
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities import service
from services.activities.activities.models import Activity
from services.activities.assessments import service as assessments
from services.activities.assessments.models import Assessment, AssessmentCreate
from services.activities.migrations import MIGRATIONS as ACTIVITIES_MIGRATIONS
from services.activities.registry_view.client import RegistryClient
from services.activities.registry_view.models import OrganizationView, VolunteerView
from services.activities.scope import visibility
from shared import events as ev
from shared.caller import SCOPES, CallerContext
from shared.db import make_sessionmaker
from shared.errors import ProblemError
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


@pytest.mark.skipif(database_mode() != "postgresql", reason="SQLite has one writer: a write cannot be in flight beside a handler")
async def test_an_assessment_in_flight_when_a_merge_commits_does_not_stay_on_the_duplicate(migrated_databases):
    """Two real transactions (committed, then deleted): the merge handler has updated the duplicate's row
    and not committed yet while an assessment of the duplicate is being written. Whichever goes first,
    nothing may be left on the duplicate (here: the write waits, then is told of the merge)."""
    engine = await migrated_databases.engine("activities", ACTIVITIES_MIGRATIONS)
    maker = make_sessionmaker(engine)
    org, duplicate, survivor = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)
    try:
        async with maker() as setup, setup.begin():
            await apply(setup, ev.ORGANIZATION_CREATED, ev.OrganizationChanged(id=org, kind="ngo"), T0)
            for v in (duplicate, survivor):
                await apply(setup, ev.VOLUNTEER_REGISTERED, volunteer(v, org), T0)

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
            writer = asyncio.create_task(assess())
            await eventually(lambda: writer.done() or _lock_waits(engine), what="the write done or waiting")
            waited = not writer.done()
        status = await writer
        assert (waited, status) == (True, 422)
        async with maker() as reading:
            left = (await reading.execute(select(Assessment).where(Assessment.volunteer_id == duplicate))).scalars().all()
        assert left == []
    finally:
        await down.close()
        async with maker() as cleanup, cleanup.begin():
            await cleanup.execute(delete(Assessment).where(Assessment.volunteer_id.in_([duplicate, survivor])))
            await cleanup.execute(delete(VolunteerView).where(VolunteerView.id.in_([duplicate, survivor])))
            await cleanup.execute(delete(OrganizationView).where(OrganizationView.id == org))

# ---- through the gateway ------------------------------------------------------------------------

async def test_only_days_the_enrolment_covers_take_entries(admin: httpx.AsyncClient):
    s = await setting(admin)  # the project runs from 2026-01-15, the enrolment from 2026-02-01
    assert_problem(await log(admin, activity_body(s, date="2026-01-20")), 422, ["body", "project_id"], says="not enrolled")
    [enrolment] = (await admin.get(f"/volunteers/{s.volunteer['id']}/enrollments")).json()["items"]
    ended = await admin.post(f"/enrollments/{enrolment['id']}/end", json={"ended_on": "2026-03-31"})
    assert ended.status_code == 200, ended.text

    async def refused() -> bool:
        item = await probe(admin, activity_body(s, date="2026-04-02"))
        return item["status"] == "error" and [e["loc"] for e in item["errors"]] == [["project_id"]]

    await eventually(refused, what="the enrolment's end reaching activities")
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
