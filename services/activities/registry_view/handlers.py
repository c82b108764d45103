"""Registry events applied to the projection, once each (the consumer runtime records them) and in
any order: an event older than the row it would change is ignored, and the flags that only ever turn
on (erased, merged) are never turned off by an older event."""
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities import service as activities
from services.activities.assessments import service as assessments
from services.activities.registry_view import repository
from services.activities.registry_view.models import (
    FETCHED, EnrollmentView, OrganizationView, ProgramView, ProjectView, VolunteerView,
)
from shared import events as ev
from shared.consumer import Handler
from shared.events import (
    CloudEvent, EnrollmentChanged, LocationsImported, OrganizationChanged, ProgramCreated, ProjectChanged,
    VolunteerChanged, VolunteerErased, VolunteerMerged,
)


async def _apply(session: AsyncSession, model, key, event: CloudEvent, values: dict) -> None:
    row = await session.get(model, key)
    if row is None:
        # Not a plain insert: a request may be storing the same record from the registry's answer.
        await repository.insert_missing(session, model, {"id": key, "event_time": event.time, **values})
        row = await session.get(model, key)  # ours, or theirs (FETCHED: this event is newer)
    if event.time >= row.event_time:
        for name, value in values.items():
            setattr(row, name, value)
        row.event_time = event.time


async def organization_changed(session: AsyncSession, event: CloudEvent, p: OrganizationChanged) -> None:
    await _apply(session, OrganizationView, p.id, event, {"parent_id": p.parent_id, "national": p.national})


async def program_created(session: AsyncSession, event: CloudEvent, p: ProgramCreated) -> None:
    await _apply(session, ProgramView, p.id, event, {"code": p.code})


async def project_changed(session: AsyncSession, event: CloudEvent, p: ProjectChanged) -> None:
    await _apply(session, ProjectView, p.id, event, {
        "program_id": p.program_id, "organization_id": p.organization_id, "focus_areas": list(p.focus_areas),
        "start_date": p.start_date, "end_date": p.end_date,
    })


async def volunteer_changed(session: AsyncSession, event: CloudEvent, p: VolunteerChanged) -> None:
    await _apply(session, VolunteerView, p.id, event, {"organization_id": p.organization_id})
    row = await session.get(VolunteerView, p.id)
    if row.organization_id == p.organization_id:  # this event is the newest: their entries follow a transfer
        await activities.follow_transfer(session, p.id, p.organization_id)
        await assessments.follow_transfer(session, p.id, p.organization_id)


async def _volunteer_row(session: AsyncSession, volunteer_id) -> VolunteerView:
    """The row to flag, locked first (FOR UPDATE, PostgreSQL): writes of new entries and assessments
    share-lock it before anything else (`repository.hold_volunteers`), so the handler waits for those
    in flight and then moves or clears what they wrote, and later ones wait for it and read the flag.
    A volunteer whose registration has not arrived yet gets a placeholder (no organisation, FETCHED
    time), which the registration fills in when it comes."""
    row = await session.get(VolunteerView, volunteer_id, with_for_update=True)
    if row is None:
        await repository.insert_missing(session, VolunteerView, {"id": volunteer_id, "event_time": FETCHED})
        row = await session.get(VolunteerView, volunteer_id, with_for_update=True)
    return row


async def volunteer_erased(session: AsyncSession, event: CloudEvent, p: VolunteerErased) -> None:
    (await _volunteer_row(session, p.id)).erased = True
    await session.flush()
    await activities.follow_erasure(session, p.id)


async def volunteer_merged(session: AsyncSession, event: CloudEvent, p: VolunteerMerged) -> None:
    (await _volunteer_row(session, p.duplicate_id)).merged_into = p.survivor_id
    await session.flush()
    await repository.move_enrollments(session, p.duplicate_id, await repository.survivor_of(session, p.survivor_id))
    await activities.follow_merge(session, p.duplicate_id, p.survivor_id)
    await assessments.follow_merge(session, p.duplicate_id, p.survivor_id)


async def enrollment_changed(session: AsyncSession, event: CloudEvent, p: EnrollmentChanged) -> None:
    # Enrolment and merge events travel on different keys, so in no fixed order: an enrolment event of
    # a volunteer already merged belongs to the survivor (where the registry moved the enrolment).
    await _apply(session, EnrollmentView, p.id, event, {
        "volunteer_id": await repository.survivor_of(session, p.volunteer_id), "project_id": p.project_id,
        "started_on": p.started_on, "ended_on": p.ended_on,
    })


async def locations_imported(session: AsyncSession, event: CloudEvent, p: LocationsImported) -> None:
    # Codes never change level or parent once given, so applying an older import again is harmless.
    await repository.upsert_locations(session, [loc.model_dump() for loc in p.locations])


HANDLERS: dict[str, Handler] = {
    ev.ORGANIZATION_CREATED: organization_changed,
    ev.ORGANIZATION_UPDATED: organization_changed,
    ev.PROGRAM_CREATED: program_created,
    ev.PROJECT_CREATED: project_changed,
    ev.PROJECT_UPDATED: project_changed,
    ev.VOLUNTEER_REGISTERED: volunteer_changed,
    ev.VOLUNTEER_UPDATED: volunteer_changed,
    ev.VOLUNTEER_ERASED: volunteer_erased,
    ev.VOLUNTEER_MERGED: volunteer_merged,
    ev.ENROLLMENT_STARTED: enrollment_changed,
    ev.ENROLLMENT_ENDED: enrollment_changed,
    ev.LOCATIONS_IMPORTED: locations_imported,
}
