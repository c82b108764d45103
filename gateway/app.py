"""The gateway: the one public entry (API keys, scopes, limits, routing, audit, docs)."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select, text
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin import router as admin_router
from gateway.audit import AuditWriter, copy_dsn
from gateway.console import mount_console
from gateway.keys import ApiKey, ApiKeyCreate, KeyStore, create_key, split_key
from gateway.metrics import Metrics
from gateway.migrations import MIGRATIONS
from gateway.openapi import MergedOpenApi
from gateway.proxy import Proxy
from gateway.ratelimit import make_limiter
from gateway.routing import owner_of, upstream_urls
from gateway.settings import GatewaySettings
from shared.caller import GDY_ORGANIZATION_ID, SCOPES, annotate_scopes
from shared.db import make_engine, make_sessionmaker, migrate, wait_for_schema
from shared.errors import install_error_handlers, problem_response
from shared.events import asyncapi_document
from shared.http import RequestContextMiddleware
from shared.logs import configure_logging
from shared.metrics import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

# Swagger UI's files, shipped inside the fastapi-offline wheel: the docs page needs no internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


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


class UpstreamReadiness:
    """The services' own `/ready`, asked at most once a second (load balancers poll `/ready` often)."""

    def __init__(self, upstreams: dict[str, str]):
        self.upstreams = upstreams
        self.checked = 0.0
        self.states: dict[str, str] = {}
        self.lock = asyncio.Lock()

    async def states_now(self, session: aiohttp.ClientSession) -> dict[str, str]:
        async with self.lock:
            if time.monotonic() - self.checked > 1.0:
                names = list(self.upstreams)
                results = await asyncio.gather(*(self._probe(session, self.upstreams[n]) for n in names))
                self.states = dict(zip(names, results))
                self.checked = time.monotonic()
            return self.states

    @staticmethod
    async def _probe(session: aiohttp.ClientSession, base: str) -> str:
        try:
            async with session.get(base + "/ready", timeout=aiohttp.ClientTimeout(total=1)) as response:
                return "ready" if response.status == 200 else "not ready"
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return "unreachable"


def create_app(settings: GatewaySettings | None = None) -> "Gateway":
    settings = settings or GatewaySettings()
    metrics = Metrics("gateway")
    upstreams = upstream_urls(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging("gateway", settings.log_level)
        engine = make_engine(settings.resolved_database_url(), pool_size=settings.database_pool_size)
        if settings.migrates_on_start:
            await migrate(engine, MIGRATIONS)
        else:  # production: `vmc migrate` is a step of its own; nothing starts on an older schema
            await wait_for_schema(engine, MIGRATIONS)
        maker = make_sessionmaker(engine)
        app.state.engine, app.state.maker = engine, maker
        keys = KeyStore(maker, settings.internal_secret, settings.key_cache_seconds)
        proxy = Proxy(settings, keys, upstreams, metrics, limiter=make_limiter(settings.redis_url))
        await proxy.start()
        audit = AuditWriter(maker, dsn=copy_dsn(engine))
        audit.start()
        proxy.audit = audit
        app.state.keys, app.state.proxy, app.state.audit = keys, proxy, audit
        gateway.proxy = proxy
        created = await bootstrap_admin_key(maker, settings)
        if created:
            log.info("created the first admin key", extra={"prefix": split_key(created)[0]})
            app.state.created_admin_key = created
        try:
            yield
        finally:
            gateway.proxy = None
            await audit.stop()
            await proxy.limiter.close()
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
    readiness = UpstreamReadiness(upstreams)
    merged = MergedOpenApi(lambda: inner.openapi(), upstreams)  # late: annotate_scopes wraps it below

    @inner.get("/health", tags=["operations"], summary="Liveness")
    async def health() -> dict:
        return {"status": "ok"}

    @inner.get("/ready", tags=["operations"], summary="Readiness: the gateway's database; the services' states")
    async def ready(request: Request):
        database = True
        try:
            async with request.app.state.maker() as session:
                await session.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - reported as not ready
            log.warning("gateway database not reachable", exc_info=True)
            database = False
        proxy: Proxy = request.app.state.proxy
        assert proxy.session is not None
        services = await readiness.states_now(proxy.session)
        circuits = {name: "open" if breaker.open else "closed" for name, breaker in proxy.breakers.items()}
        body = {"checks": {"database": database}, "services": services, "circuits": circuits}
        # The gateway stays ready while a service is away: it answers that service's routes with a
        # fast 503 and keeps serving the others.
        if database:
            return {"status": "ready", **body}
        return problem_response(503, "not ready: the gateway database is unreachable", extra=body)

    @inner.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics_route():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @inner.get("/api/v1/openapi.json", tags=["operations"], summary="This document: every service's routes, merged")
    async def openapi_document(request: Request) -> dict:
        proxy: Proxy = request.app.state.proxy
        assert proxy.session is not None
        return await merged.get(proxy.session)

    @inner.get("/api/v1/asyncapi.json", tags=["operations"], summary="The event catalogue (AsyncAPI 3.0)")
    async def asyncapi() -> dict:
        return asyncapi_document()

    @inner.get("/api/v1/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url="/api/v1/openapi.json",
            title="VMC Connect API",
            swagger_js_url="/api/v1/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/api/v1/docs/assets/swagger-ui.css",
            swagger_favicon_url="/api/v1/docs/assets/favicon.png",
            swagger_ui_parameters={"persistAuthorization": False, "displayRequestDuration": True},
        )

    inner.mount("/api/v1/docs/assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    mount_console(inner)
    annotate_scopes(inner)

    gateway = Gateway(inner, settings, metrics)
    return gateway


class Gateway:
    """ASGI entry: proxied API paths go straight to the proxy (which does its own request-context
    work, on the hot path); the rest goes through the middleware to the FastAPI app above."""

    def __init__(self, inner: FastAPI, settings: GatewaySettings, metrics: Metrics):
        self.inner = inner
        self.settings = settings
        self.metrics = metrics
        self.proxy: Proxy | None = None
        self.state = inner.state
        self._local = RequestContextMiddleware(inner, metrics)
        app: ASGIApp = self._route
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        self.cors = bool(origins)
        if origins:
            # Off unless origins are configured; then only those, and preflights are answered here.
            app = CORSMiddleware(
                app,
                allow_origins=origins,
                allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
                allow_headers=["authorization", "content-type", "idempotency-key", "x-request-id"],
                expose_headers=["x-request-id", "retry-after", "ratelimit-limit", "ratelimit-remaining",
                                "ratelimit-reset", "ratelimit-policy"],
                max_age=600,
            )
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._app(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.proxy is not None and owner_of(scope["path"]) is not None:
            await self.proxy(scope, receive, send)
        else:
            await self._local(scope, receive, send)
