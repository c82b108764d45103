"""The gateway: the one public entry (API keys, scopes, limits, routing, docs)."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import func, select
from starlette.types import Receive, Scope, Send

from gateway.admin import router as admin_router
from gateway.keys import ApiKey, ApiKeyCreate, KeyStore, create_key, split_key
from gateway.migrations import MIGRATIONS
from gateway.proxy import Proxy
from gateway.routing import owner_of, upstream_urls
from gateway.settings import GatewaySettings
from services.registry.settings import GDY_ORGANIZATION_ID
from shared.caller import SCOPES
from shared.db import make_engine, make_sessionmaker, migrate
from shared.errors import ProblemError, install_error_handlers
from shared.events import asyncapi_document
from shared.http import RequestContextMiddleware, send_problem
from shared.logs import configure_logging
from shared.metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger(__name__)


async def bootstrap_admin_key(maker, settings: GatewaySettings) -> str | None:
    """Create the first admin key (national, every scope) when the gateway has none, or the given one."""
    async with maker() as session:
        given = settings.bootstrap_admin_key or None
        if given:
            parsed = split_key(given)
            if parsed is None:
                raise ValueError("VMC_BOOTSTRAP_ADMIN_KEY must look like vmc_<prefix>_<secret>")
            exists = (await session.execute(select(ApiKey.id).where(ApiKey.prefix == parsed[0]))).first()
            if exists:
                return None
        elif (await session.execute(select(func.count()).select_from(ApiKey))).scalar_one() > 0:
            return None
        data = ApiKeyCreate(name="bootstrap admin", organization_id=GDY_ORGANIZATION_ID, scopes=list(SCOPES), national=True)
        _, key = await create_key(session, data, settings.internal_secret, given)
        await session.commit()
        return key


def create_app(settings: GatewaySettings | None = None) -> "Gateway":
    settings = settings or GatewaySettings()
    metrics = Metrics("gateway")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging("gateway", settings.log_level)
        engine = make_engine(settings.resolved_database_url())
        await migrate(engine, MIGRATIONS)
        maker = make_sessionmaker(engine)
        app.state.engine, app.state.maker = engine, maker
        keys = KeyStore(maker, settings.internal_secret, settings.key_cache_seconds)
        proxy = Proxy(settings, keys, upstream_urls(settings), metrics)
        await proxy.start()
        app.state.keys, app.state.proxy = keys, proxy
        gateway.proxy = proxy
        created = await bootstrap_admin_key(maker, settings)
        if created:
            log.info("created the first admin key", extra={"prefix": split_key(created)[0]})
            app.state.created_admin_key = created
        try:
            yield
        finally:
            await proxy.close()
            await engine.dispose()

    inner = FastAPI(
        title="VMC Connect gateway", version="1.0.0", lifespan=lifespan,
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    inner.state.settings = settings
    inner.state.metrics = metrics
    install_error_handlers(inner)
    inner.include_router(admin_router)

    @inner.get("/health", tags=["operations"])
    async def health() -> dict:
        return {"status": "ok"}

    @inner.get("/ready", tags=["operations"])
    async def ready() -> dict:
        return {"status": "ready"}

    @inner.get("/metrics", tags=["operations"])
    async def metrics_route():
        from starlette.responses import Response

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @inner.get("/api/v1/asyncapi.json", tags=["operations"])
    async def asyncapi() -> dict:
        return asyncapi_document()

    gateway = Gateway(inner, settings, metrics)
    return gateway


class Gateway:
    """ASGI entry: proxied API paths take the fast path; the rest is the FastAPI app above."""

    def __init__(self, inner: FastAPI, settings: GatewaySettings, metrics: Metrics):
        self.inner = inner
        self.settings = settings
        self.metrics = metrics
        self.proxy: Proxy | None = None
        self.state = inner.state
        self._app = RequestContextMiddleware(self._dispatch, metrics, route_of=_route_label)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._app(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.proxy is not None and owner_of(scope["path"]) is not None:
            try:
                await self.proxy(scope, receive, send)
            except ProblemError as exc:
                headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
                await send_problem(send, exc.status, exc.detail or "", headers, slug=exc.slug)
            return
        await self.inner(scope, receive, send)


def _route_label(scope: Scope) -> str:
    """Metric label: the service segment, not the raw path (ids would explode cardinality)."""
    owner = owner_of(scope["path"])
    if owner is not None:
        return "/api/v1/" + scope["path"][len("/api/v1/"):].split("/", 1)[0]
    route = scope.get("route")
    return route.path if route is not None else "unmatched"
