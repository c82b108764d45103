"""HTTP surface of enrolments: `/volunteers/{id}/enrollments` and `/enrollments/{id}`."""
from __future__ import annotations

import uuid

from fastapi import APIRouter

from services.registry.enrollments import service
from services.registry.enrollments.models import EnrollmentCreate, EnrollmentEnd, EnrollmentPublic
from services.registry.scope import VisibilityDep
from shared.caller import require_scope
from shared.errors import PROBLEM_RESPONSES
from shared.idempotency import IdempotencyDep
from shared.pagination import Cursor, Limit, Page, page_of
from shared.service import SessionDep
from shared.times import UtcTime

router = APIRouter(tags=["enrolments"], responses=PROBLEM_RESPONSES)


@router.post(
    "/volunteers/{volunteer_id}/enrollments", status_code=201, response_model=EnrollmentPublic,
    dependencies=[require_scope("registry:write")], summary="Enrol a volunteer in a project",
    responses={409: PROBLEM_RESPONSES[404] | {"description": "Already enrolled (open), or the volunteer was erased or merged"}},
)
async def enrol(volunteer_id: uuid.UUID, body: EnrollmentCreate, session: SessionDep, scope: VisibilityDep, idem: IdempotencyDep):
    return await idem.create(session, body, lambda: service.enrol(session, scope, volunteer_id, body), EnrollmentPublic)


@router.get(
    "/volunteers/{volunteer_id}/enrollments", response_model=Page[EnrollmentPublic],
    dependencies=[require_scope("registry:read")], summary="A volunteer's enrolments",
)
async def list_enrollments(
    volunteer_id: uuid.UUID, session: SessionDep, scope: VisibilityDep,
    limit: Limit = 50, cursor: Cursor = None, updated_since: UtcTime | None = None, open: bool | None = None,
):
    rows = await service.list_for(session, scope, volunteer_id, limit=limit, cursor=cursor,
                                  updated_since=updated_since, open_only=open)
    return page_of(rows, limit, EnrollmentPublic)


@router.get("/enrollments/{enrollment_id}", response_model=EnrollmentPublic, dependencies=[require_scope("registry:read")],
            summary="One enrolment")
async def get_enrollment(enrollment_id: uuid.UUID, session: SessionDep, scope: VisibilityDep):
    return await service.get_visible(session, scope, enrollment_id)


@router.post("/enrollments/{enrollment_id}/end", response_model=EnrollmentPublic, dependencies=[require_scope("registry:write")],
             summary="End an enrolment",
             responses={409: PROBLEM_RESPONSES[404] | {"description": "The enrolment has already ended"}})
async def end_enrollment(enrollment_id: uuid.UUID, body: EnrollmentEnd, session: SessionDep, scope: VisibilityDep):
    return await service.end(session, scope, enrollment_id, body)
