"""Activities' registry projection and logging rules on a rolled-back session (tests/db.py): events applied
in any order, and the registry unreachable (a URL nothing listens on): known records accepted, unknown
ones a 503, never a 422. Under tests/integration so that `make test` runs them on both dialects."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities import service
from services.activities.activities.models import ActivityCreate
from services.activities.registry_view.client import RegistryClient
from services.activities.registry_view.handlers import HANDLERS
from services.activities.registry_view.models import EnrollmentView, VolunteerView
from shared import events as ev
from shared.caller import GDY_ORGANIZATION_ID, SCOPES, CallerContext
from shared.errors import ProblemError
from shared.events import CloudEvent, new_event, parse_event
from shared.outbox import OutboxRecord
from tests.harness import database_mode

NATIONAL = CallerContext("test", uuid.UUID(GDY_ORGANIZATION_ID), frozenset(SCOPES), national=True)
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


async def apply(session: AsyncSession, type_: str, payload: ev.Payload, at: datetime) -> None:
    event: CloudEvent = new_event(type_, "subject", payload).model_copy(update={"time": at})
    await HANDLERS[type_](session, event, event.payload())


def volunteer(volunteer_id: uuid.UUID, org: uuid.UUID) -> ev.VolunteerChanged:
    return ev.VolunteerChanged(id=volunteer_id, organization_id=org, sex="female", date_of_birth=date(2004, 1, 1),
                               residence_province="12")


async def test_an_older_event_never_undoes_a_newer_one(activities_session: AsyncSession):
    v, first_org, second_org = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply(activities_session, ev.VOLUNTEER_ERASED, ev.VolunteerErased(id=v), T0 + timedelta(seconds=3))
    await apply(activities_session, ev.VOLUNTEER_UPDATED, volunteer(v, second_org), T0 + timedelta(seconds=2))
    await apply(activities_session, ev.VOLUNTEER_REGISTERED, volunteer(v, first_org), T0)  # arrives last, oldest
    row = await activities_session.get(VolunteerView, v)
    assert (row.organization_id, row.erased) == (second_org, True)


async def test_a_merge_arriving_before_the_registration_is_kept(activities_session: AsyncSession):
    duplicate, survivor, org = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply(activities_session, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=survivor, duplicate_id=duplicate), T0)
    await apply(activities_session, ev.VOLUNTEER_REGISTERED, volunteer(duplicate, org), T0 - timedelta(days=1))
    row = await activities_session.get(VolunteerView, duplicate)
    assert (row.organization_id, row.merged_into) == (org, survivor)


async def known_setting(session: AsyncSession) -> tuple[uuid.UUID, uuid.UUID]:
    """A volunteer enrolled in a project, all learned from events; returns (volunteer, project)."""
    org, program, project, v = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply(session, ev.ORGANIZATION_CREATED, ev.OrganizationChanged(id=org, kind="ngo"), T0)
    await apply(session, ev.PROGRAM_CREATED, ev.ProgramCreated(id=program, code="T"), T0)
    await apply(session, ev.PROJECT_CREATED, ev.ProjectChanged(id=project, program_id=program, organization_id=org,
                                                               start_date=date(2026, 1, 1)), T0)
    await apply(session, ev.VOLUNTEER_REGISTERED, volunteer(v, org), T0)
    await apply(session, ev.ENROLLMENT_STARTED, ev.EnrollmentChanged(id=uuid.uuid4(), volunteer_id=v, project_id=project,
                                                                     started_on=date(2026, 1, 1)), T0)
    await apply(session, ev.LOCATIONS_IMPORTED, ev.LocationsImported(locations=[ev.LocationRecord(code="12", level="province")]), T0)
    return v, project


def entry(volunteer_id: uuid.UUID, project_id: uuid.UUID, **overrides) -> ActivityCreate:
    return ActivityCreate(**{"volunteer_id": volunteer_id, "project_id": project_id, "activity_type": "clean_up",
                             "date": date(2026, 3, 2), "hours": 3, "location_code": "12", **overrides})


async def test_with_the_registry_unreachable_known_records_pass_and_unknown_ones_say_retry(activities_session: AsyncSession):
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)  # nothing listens on port 1
    try:
        v, project = await known_setting(activities_session)
        public, created = await service.record(activities_session, NATIONAL, down, entry(v, project))
        assert created and public.organization_id is not None and public.focus_area == "environment"
        for unknown in (entry(uuid.uuid4(), project), entry(v, uuid.uuid4()), entry(v, project, location_code="1201")):
            with pytest.raises(ProblemError) as refused:
                await service.record(activities_session, NATIONAL, down, unknown)
            assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        # A rule that needs no registry is still a 422, even with the registry away.
        with pytest.raises(ProblemError) as refused:
            await service.record(activities_session, NATIONAL, down, entry(v, project, hours=22))
        assert refused.value.status == 422 and refused.value.errors[0]["loc"] == ["body", "hours"]
    finally:
        await down.close()


async def test_an_enrolment_event_arriving_after_the_merge_belongs_to_the_survivor(activities_session: AsyncSession):
    duplicate, survivor, project, enrolment = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply(activities_session, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=survivor, duplicate_id=duplicate), T0)
    await apply(activities_session, ev.ENROLLMENT_STARTED, ev.EnrollmentChanged(
        id=enrolment, volunteer_id=duplicate, project_id=project, started_on=date(2026, 1, 1)), T0 - timedelta(hours=1))
    row = await activities_session.get(EnrollmentView, enrolment)
    assert row.volunteer_id == survivor


async def decided_alone(session: AsyncSession, registry: RegistryClient, body: ActivityCreate) -> list[tuple]:
    """The problems `record` answers for one entry (none: it was created), undone afterwards."""
    savepoint = await session.begin_nested()
    try:
        await service.record(session, NATIONAL, registry, body)
        return []
    except ProblemError as problem:
        return [(status, tuple(e["loc"][1:]), e["msg"]) for e in problem.errors for status in [problem.status]]
    finally:
        await savepoint.rollback()


async def decided_in_a_batch(session: AsyncSession, registry: RegistryClient, body: ActivityCreate) -> list[tuple]:
    savepoint = await session.begin_nested()
    try:
        summary = await service.record_batch(session, NATIONAL, registry, [body.model_dump(mode="json")], False)
        [item] = summary["items"]
        return [(None, tuple(e["loc"]), e["msg"]) for e in item.get("errors", [])]
    finally:
        await savepoint.rollback()


async def test_one_entry_is_decided_as_the_same_item_of_a_batch(activities_session: AsyncSession):
    """On PostgreSQL one entry takes its own two-statement path: every rule says the same as for a batch item."""
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)  # a miss is a 503 (alone) / unchecked (batch)
    try:
        v, project = await known_setting(activities_session)
        erased, merged, outsider = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        org = (await activities_session.get(VolunteerView, v)).organization_id
        for other in (erased, merged, outsider):
            await apply(activities_session, ev.VOLUNTEER_REGISTERED, volunteer(other, org), T0)
        await apply(activities_session, ev.VOLUNTEER_ERASED, ev.VolunteerErased(id=erased), T0 + timedelta(seconds=1))
        await apply(activities_session, ev.VOLUNTEER_MERGED, ev.VolunteerMerged(survivor_id=v, duplicate_id=merged),
                    T0 + timedelta(seconds=1))
        await service.record(activities_session, NATIONAL, down, entry(v, project, hours=20, client_reference="kept"))
        future = service.local_today() + timedelta(days=2)
        cases = {
            "accepted": entry(v, project, date=date(2026, 3, 3)),
            "a duplicate client reference": entry(v, project, hours=1, client_reference="kept"),
            "over 24 hours": entry(v, project, hours=4.5),
            "unknown activity type": entry(v, project, activity_type="juggling"),
            "before the project": entry(v, project, date=date(2025, 12, 31)),
            "in the future": entry(v, project, date=future),
            "erased": entry(erased, project),
            "merged": entry(merged, project),
            "unknown volunteer": entry(uuid.uuid4(), project),
            "unknown place": entry(v, project, location_code="1299"),
            "not enrolled": entry(outsider, project),
        }
        for name, body in cases.items():
            alone = await decided_alone(activities_session, down, body)
            batch = await decided_in_a_batch(activities_session, down, body)
            assert [problem[1:] for problem in alone] == [problem[1:] for problem in batch], name
            assert bool(alone) == (name not in ("accepted", "a duplicate client reference")), name
        assert (await decided_alone(activities_session, down, cases["over 24 hours"]))[0][0] == 422
        assert (await decided_alone(activities_session, down, cases["unknown volunteer"]))[0][0] == 503
    finally:
        await down.close()


@pytest.mark.skipif(database_mode() != "postgresql", reason="the two-statement path is PostgreSQL's (SQLite is local)")
async def test_one_entry_on_postgresql_takes_two_statements(activities_session: AsyncSession):
    v, project = await known_setting(activities_session)
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    assert not activities_session.info.get("outbox_dirty")
    engine = activities_session.bind.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        public, created = await service.record(activities_session, NATIONAL, None, entry(v, project, client_reference="two"))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert created and public.client_reference == "two"
    assert len(statements) == 2, statements
    # The outbox row went in with the activity, in its wire form, and the relay is woken at the commit.
    [outbox] = (await activities_session.execute(select(OutboxRecord).where(OutboxRecord.key == str(public.id)))).scalars()
    staged = parse_event(outbox.value)
    assert (outbox.topic, staged.type, staged.id) == (ev.ACTIVITIES_TOPIC, ev.ACTIVITY_SUBMITTED, outbox.event_id)
    assert staged.payload().id == public.id and staged.payload().hours == public.hours
    assert activities_session.info.get("outbox_dirty") is True
