"""Event handlers that maintain the read models; each is idempotent and order-tolerant."""
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics.models import AnalyticsState, OrganizationView
from shared.consumer import Handler
from shared.events import ORGANIZATION_CREATED, ORGANIZATION_UPDATED, CloudEvent, OrganizationChanged


async def _touch_as_of(session: AsyncSession, event: CloudEvent) -> None:
    state = await session.get(AnalyticsState, "events")
    if state is None:
        session.add(AnalyticsState(name="events", as_of=event.time))
    elif event.time > state.as_of:
        state.as_of = event.time


async def organization_changed(session: AsyncSession, event: CloudEvent, payload: OrganizationChanged) -> None:
    row = await session.get(OrganizationView, payload.id)
    if row is None:
        session.add(
            OrganizationView(
                id=payload.id, parent_id=payload.parent_id, kind=payload.kind,
                province_codes=list(payload.province_codes), event_time=event.time,
            )
        )
    elif event.time >= row.event_time:
        row.parent_id, row.kind = payload.parent_id, payload.kind
        row.province_codes, row.event_time = list(payload.province_codes), event.time
    await _touch_as_of(session, event)


HANDLERS: dict[str, Handler] = {
    ORGANIZATION_CREATED: organization_changed,
    ORGANIZATION_UPDATED: organization_changed,
}
