"""HTTP surface of projects."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from services.registry.projects import repository, service
from services.registry.projects.models import FocusArea, ProjectCreate, ProjectPublic, ProjectUpdate
from services.registry.scope import VisibilityDep
from shared.caller import require_scope
from shared.errors import PROBLEM_RESPONSES
from shared.idempotency import IdempotencyDep
from shared.pagination import Cursor, Limit, Page, page_of
from shared.service import SessionDep
from shared.times import UtcTime

router = APIRouter(prefix="/projects", tags=["projects"], responses=PROBLEM_RESPONSES)


@router.post("", status_code=201, response_model=ProjectPublic, dependencies=[require_scope("registry:write")])
async def create_project(body: ProjectCreate, session: SessionDep, scope: VisibilityDep, idem: IdempotencyDep):
    return await idem.create(session, body, lambda: service.create_project(session, scope, body), ProjectPublic)


@router.get("", response_model=Page[ProjectPublic], dependencies=[require_scope("registry:read")])
async def list_projects(
    session: SessionDep,
    scope: VisibilityDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    program_id: uuid.UUID | None = None,
    organization_id: uuid.UUID | None = None,
    focus_area: FocusArea | None = None,
    location: Annotated[str | None, Query(pattern=r"^[0-9]{2}([0-9]{2}){0,3}$",
                                          description="Gazetteer code: projects in it or in a place below it")] = None,
    updated_since: UtcTime | None = None,
):
    rows = await repository.list_page(
        session,
        limit=limit,
        cursor=cursor,
        visible_orgs=scope.orgs,
        program_id=program_id,
        organization_id=organization_id,
        focus_area=focus_area.value if focus_area else None,
        location_prefix=location,
        updated_since=updated_since,
    )
    return page_of(rows, limit, ProjectPublic)


@router.get("/{project_id}", response_model=ProjectPublic, dependencies=[require_scope("registry:read")])
async def get_project(project_id: uuid.UUID, session: SessionDep, scope: VisibilityDep):
    return await service.get_visible(session, scope, project_id)


@router.patch("/{project_id}", response_model=ProjectPublic, dependencies=[require_scope("registry:write")])
async def update_project(project_id: uuid.UUID, body: ProjectUpdate, session: SessionDep, scope: VisibilityDep):
    return await service.update_project(session, scope, project_id, body)
