"""The registry's internal references route: another service's projection missed something (a volunteer,
project or enrolment created one request earlier) and asks what exists, once, before deciding.

Not public: the gateway routes no `/internal` path, and only a caller context a service signed with
the internal secret (key id `service:<name>`) is answered; anyone else gets the 404 of a missing route.
"""
from __future__ import annotations

from fastapi import APIRouter

from services.registry.internal import repository
from services.registry.internal.models import (
    EnrollmentFacts, LocationFacts, OrganizationFacts, ProgramFacts, ProjectFacts, References, ReferencesQuery,
    VolunteerFacts,
)
from shared.caller import Caller
from shared.errors import NotFound
from shared.service import SessionDep

SERVICE_KEY_PREFIX = "service:"

router = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)


@router.post("/references", response_model=References)
async def references(body: ReferencesQuery, session: SessionDep, caller: Caller):
    if not caller.key_id.startswith(SERVICE_KEY_PREFIX):
        raise NotFound("route")
    volunteers = await repository.volunteers(session, set(body.volunteer_ids))
    projects = await repository.projects(session, set(body.project_ids))
    orgs = {v.organization_id for v in volunteers} | {p.organization_id for p in projects}
    return References(
        volunteers=[VolunteerFacts.model_validate(v, from_attributes=True) for v in volunteers],
        projects=[ProjectFacts.model_validate(p, from_attributes=True) for p in projects],
        programs=[ProgramFacts.model_validate(p, from_attributes=True)
                  for p in await repository.programs(session, {p.program_id for p in projects})],
        organizations=[OrganizationFacts.model_validate(o, from_attributes=True)
                       for o in await repository.with_ancestors(session, orgs)],
        enrollments=[EnrollmentFacts.model_validate(e, from_attributes=True)
                     for e in await repository.enrollments(session, set(body.volunteer_ids), set(body.project_ids))],
        locations=[LocationFacts.model_validate(loc, from_attributes=True)
                   for loc in await repository.locations(session, set(body.location_codes))],
    )
