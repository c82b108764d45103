"""The activities service: activity logs, verification and skills assessments."""
from __future__ import annotations

from fastapi import FastAPI

from services.activities.activities.endpoints import router as activities_router
from services.activities.activity_types.endpoints import router as activity_types_router
from services.activities.assessments.endpoints import instruments_router, router as assessments_router
from services.activities.migrations import MIGRATIONS
from services.activities.registry_view.client import RegistryClient
from services.activities.registry_view.handlers import HANDLERS as REGISTRY_HANDLERS
from services.activities.settings import ActivitiesSettings
from services.activities.verification.endpoints import router as verification_router
from shared.events import ACTIVITIES_TOPIC, REGISTRY_TOPIC
from shared.service import ConsumerSpec, ServiceSpec, create_service_app

__all__ = ["MIGRATIONS", "create_app"]


async def start_registry_client(app: FastAPI) -> None:
    """The one pooled client to the registry, for projection misses (read-your-writes)."""
    settings: ActivitiesSettings = app.state.settings
    app.state.registry = RegistryClient(settings.registry_url, settings.internal_secret, settings.registry_timeout_s)


async def stop_registry_client(app: FastAPI) -> None:
    await app.state.registry.close()


def create_app(settings: ActivitiesSettings | None = None) -> FastAPI:
    return create_service_app(
        ServiceSpec(
            name="activities",
            settings=settings or ActivitiesSettings(),
            migrations=MIGRATIONS,
            routers=[activity_types_router, activities_router, verification_router, instruments_router, assessments_router],
            publishes=[ACTIVITIES_TOPIC],
            consumers=[ConsumerSpec("activities-registry", [REGISTRY_TOPIC], REGISTRY_HANDLERS)],
            on_startup=start_registry_client,
            on_shutdown=stop_registry_client,
            description="Activity logs, verification and skills assessments.",
        )
    )
