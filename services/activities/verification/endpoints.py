"""HTTP surface of verification (one entry or many) and of corrections with their version history."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.activities.activities.endpoints import UNAVAILABLE, Registry
from services.activities.activities.models import ActivityPublic, BatchSummary
from services.activities.scope import VisibilityDep
from services.activities.verification import service
from services.activities.verification.models import (
    ActivityCorrection, BulkRequest, ReasonRequest, VerifyRequest,
)
from shared.caller import require_scope
from shared.errors import PROBLEM_RESPONSES
from shared.pagination import Page
from shared.service import SessionDep

router = APIRouter(prefix="/activities", tags=["verification"], responses=PROBLEM_RESPONSES)

_DECISION_RESPONSES = {
    403: PROBLEM_RESPONSES[403] | {"description": "The key lacks activities:verify, or its organisation may read the "
                                                 "entry (the volunteer's) but does not run the project"},
    409: PROBLEM_RESPONSES[422] | {"description": "The entry's status does not allow this decision"},
}
_RULES = ("Only the project's organisation or one above it decides; another organisation gets a 404. "
          "Sending the same decision again changes nothing and answers the entry as it stands.")


@router.post("/verifications", response_model=BatchSummary, response_model_exclude_none=True,
             dependencies=[require_scope("activities:verify")],
             summary="Verify or reject up to 1000 activities: each item decided or reported by index",
             description='Items `{"id", "decision": "verify" | "reject", "approved_hours"?, "reason"?}` (a reason is '
                         "required to reject). The answer is the §4 summary: `updated` (decided now), `ignored` (already "
                         "so decided: status `duplicate`), `errors` (with `errors [{loc, msg}]`); another organisation's "
                         "activity is an item error \"not found\". `dry_run=true` checks every decision and takes none. A 4xx "
                         "only when the request as a whole is wrong.")
async def decide_many(body: BulkRequest, session: SessionDep, scope: VisibilityDep,
                      dry_run: Annotated[bool, Query(description="check every decision, take none")] = False):
    summary = await service.decide_many(session, scope, body.items, dry_run)
    # Serialised directly: re-validating 1000 items against the response model costs more than the rest.
    return Response(summary.model_dump_json(exclude_none=True), media_type="application/json")


@router.post("/{activity_id}/verify", response_model=ActivityPublic, dependencies=[require_scope("activities:verify")],
             responses=_DECISION_RESPONSES, summary="Verify a submitted activity, all its hours or part of them",
             description=_RULES + " A verified entry is locked: it can no longer be corrected or rejected, only voided.")
async def verify(activity_id: uuid.UUID, session: SessionDep, scope: VisibilityDep, body: VerifyRequest | None = None):
    decision = service.Decision("verify", approved_hours=body.approved_hours if body else None)
    return ActivityPublic.of(await service.decide(session, scope, activity_id, decision))


@router.post("/{activity_id}/reject", response_model=ActivityPublic, dependencies=[require_scope("activities:verify")],
             responses=_DECISION_RESPONSES, summary="Reject a submitted activity, with a reason", description=_RULES)
async def reject(activity_id: uuid.UUID, body: ReasonRequest, session: SessionDep, scope: VisibilityDep):
    return ActivityPublic.of(await service.decide(session, scope, activity_id, service.Decision("reject", reason=body.reason)))


@router.post("/{activity_id}/void", response_model=ActivityPublic, dependencies=[require_scope("activities:verify")],
             responses=_DECISION_RESPONSES, summary="Void a submitted or verified activity, with a reason",
             description=_RULES + " A voided entry no longer counts in any figure.")
async def void(activity_id: uuid.UUID, body: ReasonRequest, session: SessionDep, scope: VisibilityDep):
    return ActivityPublic.of(await service.decide(session, scope, activity_id, service.Decision("void", reason=body.reason)))


@router.patch("/{activity_id}", response_model=ActivityPublic, dependencies=[require_scope("activities:write")],
              responses={409: PROBLEM_RESPONSES[422] | {"description": "The entry is verified (locked), rejected or voided"},
                         **UNAVAILABLE},
              summary="Correct a submitted activity: a new version (history at /activities/{id}/versions)",
              description="The fields sent replace the entry's; the rules of a new entry are checked again on the result "
                          "(the 24 hours of a volunteer-day without this entry's earlier hours, dates, enrolment, place). "
                          "A correction that changes nothing makes no version.")
async def correct(activity_id: uuid.UUID, body: ActivityCorrection, session: SessionDep, scope: VisibilityDep,
                  registry: Registry):
    return ActivityPublic.of(await service.correct(session, scope, registry, activity_id, body))


@router.get("/{activity_id}/versions", response_model=Page[ActivityPublic], dependencies=[require_scope("activities:read")],
            summary="Every version of an activity, oldest first; the last is the entry as it stands")
async def versions(activity_id: uuid.UUID, session: SessionDep, scope: VisibilityDep):
    return {"items": await service.versions(session, scope, activity_id), "next_cursor": None}
