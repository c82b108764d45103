"""The one service skeleton: database and migrations, outbox relay, consumers, health, errors, metrics."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import Response

from shared import consumer as consumer_mod
from shared import idempotency as idempotency_mod
from shared import outbox as outbox_mod
from shared.broker import LogWatch, broker_reachable, ensure_topics_forever, join_deadline, make_consumer, make_producer
from shared.caller import annotate_scopes
from shared.consumer import BatchUnits, EventConsumer, Handler
from shared.db import Migration, is_sqlite, make_engine, make_sessionmaker, migrate, pending_migrations
from shared.errors import install_error_handlers, problem_response
from shared.events import dead_letter_topic
from shared.http import LostRaceRetry, RequestContextMiddleware
from shared.logs import configure_logging
from shared.metrics import CONTENT_TYPE_LATEST, Metrics
from shared.outbox import OutboxRelay
from shared.settings import ServiceSettings
from shared.unit_of_work import unit_of_work

log = logging.getLogger(__name__)


@dataclass
class ConsumerSpec:
    """A consumer group of this service: its name (group id), topics and handler per event type.
    `units`, given the started app, says where its batches are applied when that is not the service's
    SQL database (the handlers then take what those units hand them instead of a session).
    `group_id`, when set, is the Kafka group instead of the name (the name still names its metrics
    and dead-letter topic): for replicas that must each read every partition. `every_partition`: the
    group is this replica's own, so its consumer must hold every partition of its topics (checked:
    `EventConsumer`)."""

    name: str
    topics: list[str]
    handlers: dict[str, Handler]
    units: Callable[[FastAPI], BatchUnits] | None = None
    group_id: str | None = None
    every_partition: bool = False


@dataclass
class ServiceSpec:
    name: str
    settings: ServiceSettings
    migrations: Sequence[Migration]
    routers: Sequence[APIRouter] = ()
    publishes: Sequence[str] = ()
    consumers: Sequence[ConsumerSpec] = ()
    on_startup: Callable[[FastAPI], Awaitable[None]] | None = None
    on_shutdown: Callable[[FastAPI], Awaitable[None]] | None = None  # after the consumers have stopped
    # More of /ready's answer (e.g. how fresh a read store is); informative, not a readiness check.
    ready_details: Callable[[FastAPI], Awaitable[dict]] | None = None
    description: str = ""
    extra_state: dict = field(default_factory=dict)


def shared_tables():
    """Platform tables every service has (outbox, relay state, processed events, idempotency)."""
    return [*outbox_mod.TABLES, *consumer_mod.TABLES, *idempotency_mod.TABLES]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: committed once when the endpoint returns, rolled back if it raises."""
    async with unit_of_work(request.app.state.maker) as session:
        yield session


# scope="function": FastAPI runs the exit (the commit) once the endpoint and its response model are
# done but before the answer is sent, so a failed commit is the request's error answer, never a lost
# write behind a 201 (the default "request" scope exits after the response has gone out).
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


class _ReadyCache:
    """`/ready` probes the broker at most once a second (load balancers poll it often)."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.checked = 0.0
        self.ok = False
        self.lock = asyncio.Lock()

    async def broker_ok(self) -> bool:
        async with self.lock:
            if time.monotonic() - self.checked > 1.0:
                self.ok = await broker_reachable(self.settings)
                self.checked = time.monotonic()
            return self.ok


def service_topics(spec: ServiceSpec) -> list[str]:
    """Every topic the service publishes to, reads, or dead-letters to: it creates them (no client
    of ours lets the broker create a topic by naming it: shared/broker.py)."""
    topics = [*spec.publishes, *(t for c in spec.consumers for t in c.topics),
              *(dead_letter_topic(c.name) for c in spec.consumers)]
    return list(dict.fromkeys(topics))


def create_service_app(spec: ServiceSpec) -> FastAPI:
    settings = spec.settings
    metrics = Metrics(spec.name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(spec.name, settings.log_level)
        engine = make_engine(settings.resolved_database_url(), pool_size=settings.database_pool_size)
        if settings.migrates_on_start:
            await migrate(engine, spec.migrations)
        app.state.engine, app.state.maker = engine, make_sessionmaker(engine)
        app.state.schema = _Schema(engine, spec.migrations)
        try:
            async with app.state.schema.gate(running(app)):
                yield
        finally:
            await engine.dispose()

    @asynccontextmanager
    async def running(app: FastAPI):
        """What reads and writes the tables: started once the schema is current (see `_Schema.gate`)."""
        maker: async_sessionmaker[AsyncSession] = app.state.maker
        if spec.on_startup:
            await spec.on_startup(app)
        topics = service_topics(spec)
        topics_task = asyncio.create_task(ensure_topics_forever(settings, topics))

        def producer_factory():
            return make_producer(settings, f"{spec.name}-{id(app)}")

        url = settings.resolved_database_url()
        relay = OutboxRelay(maker, producer_factory, metrics, LogWatch(settings, topics),
                            linger=settings.outbox_linger_ms / 1000,
                            retention=timedelta(hours=settings.outbox_retention_hours),
                            # PostgreSQL: in a thread of its own, out of the requests' loop and pool.
                            own_engine=None if is_sqlite(url) else lambda: make_engine(url, pool_size=2, max_overflow=1))
        app.state.relay = relay
        consumers = [
            EventConsumer(
                c.name,
                c.topics,
                c.handlers,
                c.units(app) if c.units else maker,
                lambda group, topics: make_consumer(settings, group, topics),
                producer_factory,
                metrics,
                max_retries=settings.consumer_max_retries,
                group_id=c.group_id,
                join_timeout=join_deadline(settings),
                every_partition=c.every_partition,
            )
            for c in spec.consumers
        ]
        app.state.consumers = consumers
        await _wait_briefly(topics_task)
        relay.start()
        for c in consumers:
            c.start()
        log.info("service started", extra={"port": settings.port})
        try:
            yield
        finally:
            topics_task.cancel()
            for c in consumers:
                await c.stop()
            if spec.on_shutdown:
                await spec.on_shutdown(app)
            await relay.stop()

    app = FastAPI(
        title=f"VMC Connect {spec.name}",
        version="1.0.0",
        description=spec.description,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        # A trailing-slash redirect would point clients at the service's own (internal) address.
        redirect_slashes=False,
    )
    app.state.spec = spec  # `vmc topics` reads the consumer groups from it (their dead-letter topics)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = _ReadyCache(settings)
    app.state.ready_details = spec.ready_details
    for key, value in spec.extra_state.items():
        setattr(app.state, key, value)
    install_error_handlers(app)
    # Inside the request context (one request id, one metric for all its runs).
    app.add_middleware(LostRaceRetry)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, secret=settings.internal_secret)
    app.include_router(operations_router())
    for router in spec.routers:
        app.include_router(router, prefix="/api/v1")
    annotate_scopes(app)
    return app


class _Schema:
    """Whether this part's database has every one of its migrations, and whether its parts started.

    Production migrates in a step of its own (`vmc migrate`, VMC_MIGRATE_ON_START unset): a part started
    on a database that step has not reached yet answers /ready 503 naming the missing migrations and
    touches no table until the step is done, then starts by itself."""

    def __init__(self, engine, migrations: Sequence[Migration]):
        self.engine, self.migrations = engine, migrations
        self.missing: list[int] = []
        self.started = False

    async def current(self) -> bool:
        try:
            self.missing = await pending_migrations(self.engine, self.migrations)
        except Exception:  # noqa: BLE001 - an unreachable database: /ready reports that itself
            log.warning("cannot read the schema version", exc_info=True)
            return False
        return not self.missing

    async def reason(self) -> str:
        if self.started or await self.current():
            return "starting"
        return (f"database schema behind: migration(s) {', '.join(map(str, self.missing))} not applied "
                "(run `vmc migrate`, or set VMC_MIGRATE_ON_START=true)")

    @asynccontextmanager
    async def gate(self, parts):
        """Enter `parts` now if the schema is current, else as soon as it is (without holding up
        the server: /ready must answer meanwhile)."""
        if await self.current():
            async with parts:
                self.started = True
                yield
            return
        stop = asyncio.Event()

        async def when_current() -> None:
            log.error(await self.reason())
            while not await self.current():
                await asyncio.sleep(2)  # polling for a step another process runs (`vmc migrate`)
            log.info("database schema current: starting")
            async with parts:
                self.started = True
                await stop.wait()

        task = asyncio.create_task(when_current())
        try:
            yield
        finally:
            stop.set()
            if not self.started:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _wait_briefly(task: asyncio.Task) -> None:
    """Give topic creation a moment so the consumers' first subscription finds the topics."""
    try:
        await asyncio.wait_for(asyncio.shield(task), 5)
    except (asyncio.TimeoutError, Exception):  # the broker may be away; the task keeps trying
        pass


def _consumer_details(app: FastAPI) -> dict:
    """Each consumer's lag per partition, dead-lettered messages and age of the last event it applied."""
    consumers = getattr(app.state, "consumers", [])
    if not consumers:
        return {}
    now = time.time()
    return {"consumers": {
        c.name: {
            "lag": dict(c.lag),
            "dead_lettered": c.dead_lettered,
            "last_event_age_s": round(now - c.last_event_time.timestamp(), 3) if c.last_event_time else None,
            "unassigned_s": round(c.unassigned_for, 1),  # 0 once the group assigned it its partitions
        }
        for c in consumers
    }}


def operations_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness: database and broker reachable, the broker taking the requests, no lost log being re-published")
    async def ready(request: Request):
        checks = {"database": False, "broker": False, "outbox": True, "consumers": True}
        try:
            async with request.app.state.maker() as session:
                await session.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:  # noqa: BLE001 - reported as not ready
            log.warning("database not reachable", exc_info=True)
        checks["broker"] = await request.app.state.ready.broker_ok()
        relay = getattr(request.app.state, "relay", None)
        problem = (relay.problem or relay.refused) if relay is not None else None  # re-publishing, or refused
        checks["outbox"] = problem is None
        # A consumer without partitions for longer than a join takes (while the broker answers: when it
        # does not, that is the reason).
        stuck = [c.problem for c in getattr(request.app.state, "consumers", []) if c.problem] if checks["broker"] else []
        checks["consumers"] = not stuck
        schema = request.app.state.schema
        if checks["database"] and not schema.started:  # waiting for `vmc migrate` (or starting): say which
            checks["schema"] = False
            return problem_response(503, f"not ready: {await schema.reason()}", extra={"checks": checks})
        details = _consumer_details(request.app)
        if request.app.state.ready_details:
            details.update(await request.app.state.ready_details(request.app))
        if all(checks.values()):
            return {"status": "ready", "checks": checks, **details}
        reasons = [f"{k} unreachable" for k in ("database", "broker") if not checks[k]] + ([problem] if problem else []) + stuck
        return problem_response(503, "not ready: " + ", ".join(reasons), extra={"checks": checks, **details})

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request):
        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
