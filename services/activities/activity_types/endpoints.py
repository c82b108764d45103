"""HTTP surface of the activity-type taxonomy (one short list, the same for every key)."""
from __future__ import annotations

from fastapi import APIRouter

from services.activities.activity_types import repository
from services.activities.activity_types.models import ActivityTypePublic
from shared.caller import require_scope
from shared.errors import PROBLEM_RESPONSES
from shared.pagination import Page
from shared.service import SessionDep

router = APIRouter(prefix="/activity-types", tags=["activities"], responses=PROBLEM_RESPONSES)


@router.get("", response_model=Page[ActivityTypePublic], dependencies=[require_scope("activities:read")],
            summary="The seeded activity types (code, English and Khmer names, focus area); one page holds them all")
async def list_activity_types(session: SessionDep):
    return {"items": await repository.all_types(session), "next_cursor": None}
