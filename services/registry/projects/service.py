"""Rules for projects: an organisation (or an ancestor) runs projects for itself; references must exist."""
from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.locations.repository import missing_codes
from services.registry.organizations import repository as organizations
from services.registry.programs import repository as programs
from services.registry.projects import repository
from services.registry.projects.models import Project, ProjectCreate, ProjectUpdate
from services.registry.scope import Visibility
from shared.db import utcnow
from shared.errors import NotFound, ProblemError
from shared.events import PROJECT_CREATED, PROJECT_UPDATED, ProjectChanged, new_event
from shared.logs import request_id_var
from shared.outbox import add_event

# Fields a PATCH may not set to null: a project always has these.
_REQUIRED = ("program_id", "organization_id", "start_date", "focus_areas", "location_codes")


def _invalid(field: str, msg: str) -> ProblemError:
    return ProblemError(422, f"{field}: {msg}", errors=[{"loc": ["body", field], "msg": msg}])


def _event(type_: str, project: Project):
    payload = ProjectChanged(
        id=project.id,
        program_id=project.program_id,
        organization_id=project.organization_id,
        focus_areas=list(project.focus_areas),
        location_codes=list(project.location_codes),
        start_date=project.start_date,
        end_date=project.end_date,
    )
    return new_event(type_, project.id, payload, request_id_var.get())


async def _check_program(session: AsyncSession, program_id: uuid.UUID) -> None:
    if await programs.get(session, program_id) is None:
        raise _invalid("program_id", "programme not found")


async def _check_organization(session: AsyncSession, scope: Visibility, organization_id: uuid.UUID) -> None:
    # An organisation outside the caller's tree answers like a missing one: its existence is not told.
    if not scope.can_manage(organization_id) or await organizations.get(session, organization_id) is None:
        raise _invalid("organization_id", "organisation not found (a key creates projects for its own organisation or one below it)")


async def _check_locations(session: AsyncSession, codes: list[str]) -> None:
    unknown = await missing_codes(session, codes)
    if unknown:
        raise _invalid("location_codes", f"unknown location codes: {', '.join(unknown)}")


def _check_dates(start: date | None, end: date | None) -> None:
    if start is not None and end is not None and end < start:
        raise _invalid("end_date", f"must be on or after start_date ({start.isoformat()})")


def _check_name(name: str | None, name_km: str | None) -> None:
    if name is None and name_km is None:
        raise _invalid("name", "name or name_km is required")


async def create_project(session: AsyncSession, scope: Visibility, data: ProjectCreate) -> Project:
    _check_name(data.name, data.name_km)
    _check_dates(data.start_date, data.end_date)
    await _check_organization(session, scope, data.organization_id)
    await _check_program(session, data.program_id)
    await _check_locations(session, data.location_codes)
    project = Project(**{**data.model_dump(), "focus_areas": [area.value for area in data.focus_areas]})
    session.add(project)
    add_event(session, _event(PROJECT_CREATED, project))
    return project


async def get_visible(session: AsyncSession, scope: Visibility, project_id: uuid.UUID) -> Project:
    project = await repository.get(session, project_id)
    if project is None or not scope.can_see(project.organization_id):
        raise NotFound("project")
    return project


async def update_project(session: AsyncSession, scope: Visibility, project_id: uuid.UUID, data: ProjectUpdate) -> Project:
    project = await get_visible(session, scope, project_id)
    changes = data.model_dump(exclude_unset=True)
    for field in _REQUIRED:
        if field in changes and changes[field] is None:
            raise _invalid(field, "cannot be null")
    if "organization_id" in changes and changes["organization_id"] != project.organization_id:
        await _check_organization(session, scope, changes["organization_id"])
    if "program_id" in changes and changes["program_id"] != project.program_id:
        await _check_program(session, changes["program_id"])
    if "location_codes" in changes:
        await _check_locations(session, changes["location_codes"])
    _check_name(changes.get("name", project.name), changes.get("name_km", project.name_km))
    _check_dates(changes.get("start_date", project.start_date), changes.get("end_date", project.end_date))
    if "focus_areas" in changes:
        changes["focus_areas"] = [area.value for area in data.focus_areas]
    changes = {key: value for key, value in changes.items() if getattr(project, key) != value}
    if not changes:
        return project  # nothing changed: no new version for incremental sync, no event
    for key, value in changes.items():
        setattr(project, key, value)
    project.updated_at = utcnow()
    add_event(session, _event(PROJECT_UPDATED, project))
    return project
