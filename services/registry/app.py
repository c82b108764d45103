"""The registry service: master data of the programme (locations, organisations, volunteers, ...)."""
from __future__ import annotations

import uuid

from fastapi import FastAPI
from sqlalchemy import select

from services.registry.migrations import MIGRATIONS
from services.registry.organizations.endpoints import router as organizations_router
from services.registry.volunteers.endpoints import router as volunteers_router
from services.registry.enrollments.endpoints import router as enrollments_router
from services.registry.internal.endpoints import router as internal_router
from services.registry.locations.endpoints import router as locations_router
from services.registry.programs.endpoints import router as programs_router
from services.registry.projects.endpoints import router as projects_router
from services.registry.organizations.models import Organization
from services.registry.organizations.service import organization_event
from services.registry.settings import GDY_ORGANIZATION_ID, RegistrySettings
from shared.events import ORGANIZATION_CREATED, REGISTRY_TOPIC
from shared.outbox import OutboxRecord, add_event
from shared.service import ServiceSpec, create_service_app
from shared.unit_of_work import unit_of_work


async def seed(app: FastAPI) -> None:
    """Publish the seeded national organisation once, so projections know it."""
    async with unit_of_work(app.state.maker) as session:
        org = await session.get(Organization, uuid.UUID(GDY_ORGANIZATION_ID))
        published = (await session.execute(select(OutboxRecord.seq).where(OutboxRecord.key == GDY_ORGANIZATION_ID).limit(1))).first()
        if org is not None and published is None:
            add_event(session, organization_event(ORGANIZATION_CREATED, org))


def create_app(settings: RegistrySettings | None = None) -> FastAPI:
    return create_service_app(
        ServiceSpec(
            name="registry",
            settings=settings or RegistrySettings(),
            migrations=MIGRATIONS,
            routers=[organizations_router, locations_router, programs_router, projects_router,
                     volunteers_router, enrollments_router, internal_router],
            publishes=[REGISTRY_TOPIC],
            on_startup=seed,
            description="Locations, organisations, programmes, projects, volunteers and enrolments.",
        )
    )
