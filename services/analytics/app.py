"""The analytics service: a read store built only from events, and the figures dashboards read."""
from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client import Gauge

from services.analytics.endpoints import router
from services.analytics.export_endpoints import router as export_router
from services.analytics.migrations import MIGRATIONS
from services.analytics.projections import HANDLERS, StoreBatches
from services.analytics.settings import AnalyticsSettings
from services.analytics.rebuild import router as rebuild_router
from services.analytics.store import AnalyticsStore, current_file
from shared.events import ACTIVITIES_TOPIC, REGISTRY_TOPIC
from shared.service import ConsumerSpec, ServiceSpec, create_service_app


async def open_store(app: FastAPI) -> None:
    store = app.state.store = AnalyticsStore(current_file(app.state.settings.resolved_store_path()), serving=True)
    # Computed at scrape time, so an idle or stuck consumer shows a growing age.
    Gauge("vmc_analytics_as_of_age_seconds", "Seconds since the time of the latest event in the read store",
          registry=app.state.metrics.registry).set_function(lambda: _as_of_age(store))


async def close_store(app: FastAPI) -> None:
    app.state.store.close()


def _as_of_age(store: AnalyticsStore) -> float:
    as_of = store.as_of()
    return time.time() - as_of.timestamp() if as_of else float("nan")


async def store_freshness(app: FastAPI) -> dict:
    store: AnalyticsStore | None = getattr(app.state, "store", None)
    if store is None:  # not opened yet: the service waits for its schema (shared.service `_Schema`)
        return {"store": None}
    as_of = (await store.read("SELECT as_of FROM store_state WHERE name = 'events'") or [(None,)])[0][0]
    return {"store": {"as_of": as_of.isoformat() if as_of else None,
                      "as_of_age_s": round(time.time() - as_of.timestamp(), 3) if as_of else None}}


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or AnalyticsSettings()
    return create_service_app(
        ServiceSpec(
            name="analytics",
            settings=settings,
            migrations=MIGRATIONS,
            routers=[router, rebuild_router, export_router],
            consumers=[ConsumerSpec("analytics", [REGISTRY_TOPIC, ACTIVITIES_TOPIC], HANDLERS,
                                    units=lambda app: StoreBatches(app.state.store),
                                    group_id=settings.consumer_group, every_partition=True)],
            on_startup=open_store,
            on_shutdown=close_store,
            ready_details=store_freshness,
            description="Disaggregated, privacy-safe figures built from events.",
        )
    )
