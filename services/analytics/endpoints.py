"""HTTP surface of analytics."""
from __future__ import annotations

from fastapi import APIRouter

from services.analytics.store import StoreDep
from shared.caller import require_scope
from shared.errors import PROBLEM_RESPONSES

router = APIRouter(prefix="/analytics", tags=["analytics"], responses=PROBLEM_RESPONSES)


@router.get("/overview", dependencies=[require_scope("analytics:read")])
async def overview(store: StoreDep) -> dict:
    """Headline counts of what analytics has learnt from events so far."""
    as_of, organizations = (await store.read(
        "SELECT (SELECT as_of FROM store_state WHERE name = 'events'), (SELECT count(*) FROM organization)"))[0]
    return {"as_of": as_of, "organizations": organizations}
