"""Analytics' projections on a rolled-back session: events applied in any order leave the newest state."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics.models import AnalyticsState, OrganizationView
from services.analytics.projections import HANDLERS
from shared.events import ORGANIZATION_CREATED, ORGANIZATION_UPDATED, OrganizationChanged, new_event

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


async def apply(session: AsyncSession, type_: str, payload: OrganizationChanged, at: datetime) -> None:
    event = new_event(type_, payload.id, payload).model_copy(update={"time": at})
    await HANDLERS[type_](session, event, payload)
    await session.flush()


async def test_an_older_update_arriving_late_does_not_undo_a_newer_one(analytics_session: AsyncSession):
    org = uuid.uuid4()
    await apply(analytics_session, ORGANIZATION_CREATED, OrganizationChanged(id=org, kind="ngo", province_codes=["12"]), T0)
    newer = OrganizationChanged(id=org, kind="school", province_codes=["17"])
    await apply(analytics_session, ORGANIZATION_UPDATED, newer, T0 + timedelta(minutes=2))
    older = OrganizationChanged(id=org, kind="youth_club", province_codes=["01"])
    await apply(analytics_session, ORGANIZATION_UPDATED, older, T0 + timedelta(minutes=1))

    row = await analytics_session.get(OrganizationView, org)
    assert (row.kind, row.province_codes, row.event_time) == ("school", ["17"], T0 + timedelta(minutes=2))
    assert (await analytics_session.get(AnalyticsState, "events")).as_of == T0 + timedelta(minutes=2)
