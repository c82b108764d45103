"""HTTP surface of assessments and the instruments they use."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from services.activities.activities.endpoints import UNAVAILABLE, Registry
from services.activities.assessments import repository, service
from services.activities.assessments.instruments import INSTRUMENTS
from services.activities.assessments.models import (
    AssessmentCreate, AssessmentPublic, InstrumentCode, InstrumentList, Phase,
)
from services.activities.scope import VisibilityDep
from shared.caller import require_scope
from shared.errors import PROBLEM_RESPONSES
from shared.idempotency import IdempotencyDep
from shared.pagination import Cursor, Limit, Page, page_of
from shared.service import SessionDep
from shared.times import UtcTime

instruments_router = APIRouter(prefix="/assessment-instruments", tags=["assessments"], responses=PROBLEM_RESPONSES)
router = APIRouter(prefix="/assessments", tags=["assessments"], responses=PROBLEM_RESPONSES)

_CONFLICT = {409: PROBLEM_RESPONSES[422] | {"description": "Conflict: this volunteer, instrument and phase already "
                                                           "has an assessment (named in `existing_id`)"}}


@instruments_router.get("", response_model=InstrumentList, dependencies=[require_scope("activities:read")],
                        summary="The seeded instruments: item codes, names and the score range of every item")
async def list_instruments():
    return {"items": [{**vars(i), "items": [vars(item) for item in i.items]} for i in INSTRUMENTS.values()],
            "next_cursor": None}


@router.post(
    "", status_code=201, response_model=AssessmentPublic, dependencies=[require_scope("activities:write")],
    responses=_CONFLICT | UNAVAILABLE,
    summary="Record an assessment (or replace one)",
    description=(
        "Every item of the instrument is scored, within its range; `total` is computed by the service (sending it "
        "is a 422). One assessment per volunteer, instrument and phase: a second one is a 409 whose `existing_id` "
        "names the first, unless the body says `\"replaces\": \"<that id>\"`; the replaced assessment stays "
        "readable with `replaced_by` set, and `vmc.assessment.replaced` is published instead of "
        "`vmc.assessment.recorded`. `taken_on` is a local date in Asia/Phnom_Penh and cannot be in the future."
    ),
)
async def record_assessment(body: AssessmentCreate, session: SessionDep, scope: VisibilityDep, registry: Registry,
                            idem: IdempotencyDep):
    return await idem.create(session, body, lambda: service.record_assessment(session, registry, scope, body),
                             AssessmentPublic)


@router.get("", response_model=Page[AssessmentPublic], dependencies=[require_scope("activities:read")],
            summary="Assessments of the volunteers the key's organisation (or one below it) manages")
async def list_assessments(
    session: SessionDep,
    scope: VisibilityDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    volunteer_id: uuid.UUID | None = None,
    instrument: InstrumentCode | None = None,
    phase: Phase | None = None,
    current: Annotated[bool | None, Query(description="true: only assessments nothing replaced; false: only replaced ones")] = None,
    updated_since: UtcTime | None = None,
):
    rows = await repository.list_page(session, organization_ids=scope.orgs, limit=limit, cursor=cursor, volunteer_id=volunteer_id,
                                      instrument=instrument, phase=phase, current_only=current,
                                      updated_since=updated_since)
    return page_of(rows, limit, AssessmentPublic)


@router.get("/{assessment_id}", response_model=AssessmentPublic, dependencies=[require_scope("activities:read")])
async def get_assessment(assessment_id: uuid.UUID, session: SessionDep, scope: VisibilityDep):
    return await service.get_assessment(session, scope, assessment_id)
