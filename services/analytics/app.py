"""The analytics service: read models built from events, and the figures dashboards read."""
from __future__ import annotations

from fastapi import FastAPI

from services.analytics.endpoints import router
from services.analytics.migrations import MIGRATIONS
from services.analytics.projections import HANDLERS
from services.analytics.settings import AnalyticsSettings
from shared.events import ACTIVITIES_TOPIC, REGISTRY_TOPIC
from shared.service import ConsumerSpec, ServiceSpec, create_service_app


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    return create_service_app(
        ServiceSpec(
            name="analytics",
            settings=settings or AnalyticsSettings(),
            migrations=MIGRATIONS,
            routers=[router],
            consumers=[ConsumerSpec("analytics", [REGISTRY_TOPIC, ACTIVITIES_TOPIC], HANDLERS)],
            description="Disaggregated, privacy-safe figures built from events.",
        )
    )
