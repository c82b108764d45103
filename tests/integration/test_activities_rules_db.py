"""Activities' registry projection and logging rules on a rolled-back session (tests/db.py): events applied
in any order, and the registry unreachable (a URL nothing listens on): known records accepted, unknown
ones a 503, never a 422. Under tests/integration so that `make test` runs them on both dialects."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities import service
from services.activities.activities.models import ActivityCreate
from services.activities.registry_view.client import RegistryClient
from services.activities.registry_view.handlers import HANDLERS
from services.activities.registry_view.models import EnrollmentView, VolunteerView
from shared import events as ev
from shared.caller import GDY_ORGANIZATION_ID, SCOPES, CallerContext
from shared.errors import ProblemError
from shared.events import CloudEvent, new_event

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
