"""Rules for enrolments: an active volunteer in an existing project, one open enrolment per project."""
from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.enrollments import repository
from services.registry.enrollments.models import Enrollment, EnrollmentCreate, EnrollmentEnd
from services.registry.scope import Visibility
from services.registry.volunteers import repository as volunteers
from services.registry.volunteers.models import Volunteer
from services.registry.volunteers.rules import local_today
from shared.db import utcnow
from shared.errors import NotFound, ProblemError
from shared.events import ENROLLMENT_ENDED, ENROLLMENT_STARTED, EnrollmentChanged, new_event
from shared.logs import request_id_var
from shared.outbox import add_event


def _event(type_: str, row: Enrollment):
    payload = EnrollmentChanged(
        id=row.id, volunteer_id=row.volunteer_id, project_id=row.project_id, role=row.role,
        started_on=row.started_on, ended_on=row.ended_on, end_reason=row.end_reason,
    )
    return new_event(type_, row.id, payload, request_id_var.get())


def _invalid(field: str, msg: str) -> ProblemError:
    return ProblemError(422, f"{field}: {msg}", errors=[{"loc": ["body", field], "msg": msg}])


async def _volunteer(session: AsyncSession, scope: Visibility, volunteer_id: uuid.UUID) -> Volunteer:
    row = await volunteers.get(session, volunteer_id)
    if row is None or not scope.can_see(row.organization_id):
        raise NotFound("volunteer")
    return row


def _already_open(existing_id: uuid.UUID) -> ProblemError:
    return ProblemError(409, f"the volunteer already has an open enrolment in this project: {existing_id}",
                        slug="enrollment-open", extra={"existing_id": str(existing_id)})


async def enrol(session: AsyncSession, scope: Visibility, volunteer_id: uuid.UUID, data: EnrollmentCreate) -> Enrollment:
    volunteer = await _volunteer(session, scope, volunteer_id)
    if volunteer.merged_into is not None:
        raise ProblemError(409, f"volunteer {volunteer.id} was merged into {volunteer.merged_into}; enrol that record",
                           slug="volunteer-merged", extra={"merged_into": str(volunteer.merged_into)})
    if volunteer.erased:
        raise ProblemError(409, f"volunteer {volunteer.id} was erased and cannot be enrolled", slug="volunteer-erased")
    project = await repository.project(session, data.project_id)
    # A project the key cannot see (another organisation's tree) is answered like one that does not exist.
    if project is None or not scope.can_see(project.organization_id):
        raise _invalid("project_id", "project not found")
    if project.start_date is not None and data.started_on < project.start_date:
        raise _invalid("started_on", f"before the project's start ({project.start_date.isoformat()})")
    if project.end_date is not None and data.started_on > project.end_date:
        raise _invalid("started_on", f"after the project's end ({project.end_date.isoformat()})")
    if data.started_on < volunteer.date_of_birth:
        raise _invalid("started_on", "before the volunteer's date of birth")
    existing = await repository.open_enrollment(session, volunteer.id, project.id)
    if existing is not None:
        raise _already_open(existing.id)
    now = utcnow()
    row = Enrollment(volunteer_id=volunteer.id, project_id=project.id, role=data.role, started_on=data.started_on,
                     created_at=now, updated_at=now)
    session.add(row)
    add_event(session, _event(ENROLLMENT_STARTED, row))
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent twin opened the same enrolment first
        raise ProblemError(409, "the volunteer already has an open enrolment in this project",
                           slug="enrollment-open") from exc
    return row


async def get_visible(session: AsyncSession, scope: Visibility, enrollment_id: uuid.UUID, *, lock: bool = False) -> Enrollment:
    row = await repository.get(session, enrollment_id, lock=lock)
    if row is None:
        raise NotFound("enrollment")
    volunteer = await volunteers.get(session, row.volunteer_id)
    if volunteer is None or not scope.can_see(volunteer.organization_id):
        raise NotFound("enrollment")
    return row


async def end(session: AsyncSession, scope: Visibility, enrollment_id: uuid.UUID, data: EnrollmentEnd) -> Enrollment:
    row = await get_visible(session, scope, enrollment_id, lock=True)
    if row.ended_on is not None:
        raise ProblemError(409, f"the enrolment already ended on {row.ended_on.isoformat()}", slug="enrollment-ended")
    if data.ended_on < row.started_on:
        raise _invalid("ended_on", f"before the enrolment started ({row.started_on.isoformat()})")
    if data.ended_on > local_today():
        raise _invalid("ended_on", "in the future (end an enrolment on or after its last day)")
    row.ended_on, row.end_reason, row.updated_at = data.ended_on, data.end_reason, utcnow()
    add_event(session, _event(ENROLLMENT_ENDED, row))
    return row


async def list_for(session: AsyncSession, scope: Visibility, volunteer_id: uuid.UUID, **filters) -> list[Enrollment]:
    await _volunteer(session, scope, volunteer_id)
    return await repository.page(session, volunteer_id, **filters)


async def move_to_survivor(session: AsyncSession, duplicate_id: uuid.UUID, survivor_id: uuid.UUID, today: date) -> None:
    """A merge hands the duplicate's enrolments to the survivor. Where both are open in one project,
    the duplicate's ends (today, or its start if that is later) so one open enrolment remains."""
    survivor_open = {e.project_id for e in await repository.open_of(session, survivor_id)}
    now = utcnow()
    for row in await repository.open_of(session, duplicate_id):
        if row.project_id in survivor_open:
            row.ended_on = max(today, row.started_on)
            row.end_reason = f"merged into volunteer {survivor_id}"
            row.updated_at = now
            add_event(session, _event(ENROLLMENT_ENDED, row))
    await session.flush()  # the ends must reach the database before the move meets the unique index
    await repository.move(session, duplicate_id, survivor_id, now)
