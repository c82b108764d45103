"""Rules for organisations: who may create or change which, tree integrity, events."""
from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.locations.repository import missing_codes
from services.registry.organizations import repository
from services.registry.organizations.models import Organization, OrganizationCreate, OrganizationUpdate
from services.registry.scope import Visibility
from shared.db import utcnow
from shared.errors import NotFound, ProblemError
from shared.events import ORGANIZATION_CREATED, ORGANIZATION_UPDATED, OrganizationChanged, new_event
from shared.logs import request_id_var
from shared.outbox import add_event


def organization_event(type_: str, org: Organization):
    payload = OrganizationChanged(
        id=org.id,
        name=org.name,
        name_km=org.name_km,
        kind=org.kind.value if hasattr(org.kind, "value") else org.kind,
        parent_id=org.parent_id,
        province_codes=list(org.province_codes),
        national=org.national,
    )
    return new_event(type_, org.id, payload, request_id_var.get())


async def _check_provinces(session: AsyncSession, codes: list[str]) -> None:
    unknown = await missing_codes(session, codes, level="province")
    if unknown:
        raise ProblemError(
            422, f"unknown province codes: {', '.join(unknown)}", errors=[{"loc": ["body", "province_codes"], "msg": f"unknown province codes: {', '.join(unknown)}"}]
        )


async def _check_parent(session: AsyncSession, scope: Visibility, parent_id: uuid.UUID | None) -> None:
    if parent_id is None:
        if not scope.caller.national:
            raise ProblemError(422, "parent_id is required: an organisation key registers organisations below its own",
                               errors=[{"loc": ["body", "parent_id"], "msg": "required for a non-national key"}])
        return
    parent = await repository.get(session, parent_id)
    if parent is None or not scope.can_see(parent_id):
        raise ProblemError(422, "parent organisation not found", errors=[{"loc": ["body", "parent_id"], "msg": "not found"}])


async def create_organization(session: AsyncSession, scope: Visibility, data: OrganizationCreate) -> Organization:
    if data.name is None and data.name_km is None:
        raise ProblemError(422, "name or name_km is required", errors=[{"loc": ["body", "name"], "msg": "name or name_km is required"}])
    parent_id = data.parent_id
    if parent_id is None and not scope.caller.national:
        parent_id = scope.caller.organization_id
    await _check_parent(session, scope, parent_id)
    await _check_provinces(session, data.province_codes)
    org = Organization(**data.model_dump(exclude={"parent_id"}), parent_id=parent_id)
    session.add(org)
    add_event(session, organization_event(ORGANIZATION_CREATED, org))
    return org


async def get_visible(session: AsyncSession, scope: Visibility, org_id: uuid.UUID) -> Organization:
    org = await repository.get(session, org_id)
    if org is None or not scope.can_see(org.id):
        raise NotFound("organization")
    return org


async def update_organization(session: AsyncSession, scope: Visibility, org_id: uuid.UUID, data: OrganizationUpdate) -> Organization:
    org = await get_visible(session, scope, org_id)
    changes = data.model_dump(exclude_unset=True)
    for required in ("kind", "province_codes"):
        if required in changes and changes[required] is None:
            raise ProblemError(422, f"{required} cannot be null", errors=[{"loc": ["body", required], "msg": "cannot be null"}])
    if "parent_id" in changes:
        new_parent = changes["parent_id"]
        if org.id == scope.caller.organization_id and not scope.caller.national:
            raise ProblemError(403, "a key cannot move its own organisation", slug="forbidden")
        await _check_parent(session, scope, new_parent)
        if new_parent is not None and new_parent in await repository.subtree_ids(session, org.id):
            raise ProblemError(422, "an organisation cannot be placed below itself",
                               errors=[{"loc": ["body", "parent_id"], "msg": "would create a cycle"}])
    if changes.get("province_codes") is not None:
        await _check_provinces(session, changes["province_codes"])
    for key, value in changes.items():
        setattr(org, key, value)
    if org.name is None and org.name_km is None:
        raise ProblemError(422, "name or name_km is required", errors=[{"loc": ["body", "name"], "msg": "name or name_km is required"}])
    org.updated_at = utcnow()
    add_event(session, organization_event(ORGANIZATION_UPDATED, org))
    return org
