"""HTTP surface of analytics."""
from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select

from services.analytics.models import AnalyticsState, OrganizationView
from shared.caller import require_scope
from shared.errors import PROBLEM_RESPONSES
from shared.service import SessionDep

router = APIRouter(prefix="/analytics", tags=["analytics"], responses=PROBLEM_RESPONSES)


@router.get("/overview", dependencies=[require_scope("analytics:read")])
async def overview(session: SessionDep) -> dict:
    """Headline counts of what analytics has learnt from events so far."""
    state = await session.get(AnalyticsState, "events")
    organizations = (await session.execute(select(func.count()).select_from(OrganizationView))).scalar_one()
    return {"as_of": state.as_of if state else None, "organizations": organizations}
