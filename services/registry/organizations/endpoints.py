"""HTTP surface of organisations."""
from __future__ import annotations

import uuid

from fastapi import APIRouter
from sqlalchemy import select

from services.registry.organizations.models import (
    Organization, OrganizationCreate, OrganizationKind, OrganizationPublic, OrganizationUpdate,
)
from services.registry.organizations import service
from services.registry.scope import VisibilityDep
from shared.caller import require_scope
from shared.errors import PROBLEM_RESPONSES
from shared.idempotency import IdempotencyDep
from shared.pagination import Cursor, Limit, Page, page_of, paginate
from shared.service import SessionDep
from shared.times import UtcTime

router = APIRouter(prefix="/organizations", tags=["organizations"], responses=PROBLEM_RESPONSES)


@router.post("", status_code=201, response_model=OrganizationPublic, dependencies=[require_scope("registry:write")])
async def create_organization(body: OrganizationCreate, session: SessionDep, scope: VisibilityDep, idem: IdempotencyDep):
    return await idem.create(session, body, lambda: service.create_organization(session, scope, body), OrganizationPublic)


@router.get("", response_model=Page[OrganizationPublic], dependencies=[require_scope("registry:read")])
async def list_organizations(
    session: SessionDep,
    scope: VisibilityDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    parent_id: uuid.UUID | None = None,
    kind: OrganizationKind | None = None,  # an unknown kind is a 422 naming the allowed ones
    updated_since: UtcTime | None = None,
):
    query = select(Organization)
    if scope.orgs is not None:
        query = query.where(Organization.id.in_(scope.orgs))
    if parent_id is not None:
        query = query.where(Organization.parent_id == parent_id)
    if kind is not None:
        query = query.where(Organization.kind == kind)
    if updated_since is not None:
        query = query.where(Organization.updated_at >= updated_since)
    rows = list((await session.execute(paginate(query, Organization, limit, cursor))).scalars())
    return page_of(rows, limit, OrganizationPublic)


@router.get("/{org_id}", response_model=OrganizationPublic, dependencies=[require_scope("registry:read")])
async def get_organization(org_id: uuid.UUID, session: SessionDep, scope: VisibilityDep):
    return await service.get_visible(session, scope, org_id)


@router.patch("/{org_id}", response_model=OrganizationPublic, dependencies=[require_scope("registry:write")])
async def update_organization(org_id: uuid.UUID, body: OrganizationUpdate, session: SessionDep, scope: VisibilityDep):
    return await service.update_organization(session, scope, org_id, body)
