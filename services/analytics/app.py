"""The analytics service: a read store built only from events, and the figures dashboards read."""
from __future__ import annotations

import asyncio
import logging
import time

from fastapi import FastAPI
from prometheus_client import Counter, Gauge

from services.analytics.endpoints import router
from services.analytics.export_endpoints import router as export_router
from services.analytics.migrations import MIGRATIONS
from services.analytics.projections import HANDLERS, StoreBatches, Upkeep
from services.analytics.settings import AnalyticsSettings
from services.analytics.rebuild import router as rebuild_router
from services.analytics.store import AnalyticsStore, current_file
from shared.events import ACTIVITIES_TOPIC, REGISTRY_TOPIC
from shared.service import ConsumerSpec, ServiceSpec, create_service_app

log = logging.getLogger(__name__)


async def open_store(app: FastAPI) -> None:
    store = app.state.store = AnalyticsStore(current_file(app.state.settings.resolved_store_path()), serving=True)
    registry = app.state.metrics.registry
    failures = Counter("vmc_analytics_upkeep_failures_total", "Upkeeps of the derived tables that failed (tried again)",
                       registry=registry)

    def failed(exc: Exception) -> None:
        failures.inc()
        log.warning("analytics upkeep failed, trying again: %s", exc)
    app.state.upkeep = Upkeep(store, on_error=failed)
    # Computed at scrape time, so an idle or stuck consumer (or upkeep) shows a growing age.
    Gauge("vmc_analytics_as_of_age_seconds", "Seconds since the time of the latest event in the read store",
          registry=registry).set_function(lambda: _as_of_age(store, "events"))
    Gauge("vmc_analytics_derived_as_of_age_seconds",
          "Seconds since the time of the latest event the derived tables (summary, cells, totals, skills) hold",
          registry=registry).set_function(lambda: _as_of_age(store, "derived"))
    Gauge("vmc_analytics_upkeep_pending_rows", "Activity rows stored but not yet taken into the derived tables",
          registry=registry).set_function(lambda: store.query("SELECT count(DISTINCT id) FROM pending_activity")[0][0])


async def close_store(app: FastAPI) -> None:
    await asyncio.to_thread(app.state.upkeep.close)
    app.state.store.close()


def _as_of_age(store: AnalyticsStore, state: str) -> float:
    as_of = store.as_of(state)
    return time.time() - as_of.timestamp() if as_of else float("nan")


async def store_freshness(app: FastAPI) -> dict:
    store: AnalyticsStore | None = getattr(app.state, "store", None)
    if store is None:  # not opened yet: the service waits for its schema (shared.service `_Schema`)
        return {"store": None}
    states = dict(await store.read("SELECT name, as_of FROM store_state WHERE name IN ('events', 'derived')"))
    pending = (await store.read("SELECT count(DISTINCT id) FROM pending_activity"))[0][0]

    def age(as_of) -> float | None:
        return round(time.time() - as_of.timestamp(), 3) if as_of else None
    as_of, derived = states.get("events"), states.get("derived")
    return {"store": {"as_of": as_of.isoformat() if as_of else None, "as_of_age_s": age(as_of),
                      "derived_as_of": derived.isoformat() if derived else None, "derived_as_of_age_s": age(derived),
                      "upkeep_pending_rows": pending}}


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or AnalyticsSettings()
    return create_service_app(
        ServiceSpec(
            name="analytics",
            settings=settings,
            migrations=MIGRATIONS,
            routers=[router, rebuild_router, export_router],
            consumers=[ConsumerSpec("analytics", [REGISTRY_TOPIC, ACTIVITIES_TOPIC], HANDLERS,
                                    units=lambda app: StoreBatches(app.state.store, app.state.upkeep),
                                    group_id=settings.consumer_group, every_partition=True)],
            on_startup=open_store,
            on_shutdown=close_store,
            ready_details=store_freshness,
            description="Disaggregated, privacy-safe figures built from events.",
        )
    )
