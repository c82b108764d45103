"""A database that is away answers a retryable 503 problem, not a 500."""
from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.errors import install_error_handlers
from shared.http import RequestContextMiddleware
from shared.metrics import Metrics


class TooManyConnectionsError(Exception):
    """Named like asyncpg's: the handler recognises drivers' errors by class name."""


def app_raising(exc: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=Metrics("test"))

    @app.get("/boom")
    async def boom():
        raise exc

    return app


async def status_of(exc: Exception) -> tuple[int, dict]:
    transport = httpx.ASGITransport(app=app_raising(exc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom")
    return response.status_code, response.headers


async def test_database_unavailable_is_a_503_with_retry_after():
    for exc in (
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        DBAPIError("SELECT 1", {}, TooManyConnectionsError("sorry, too many clients already")),
        ConnectionRefusedError(111, "refused"),
    ):
        status, headers = await status_of(exc)
        assert status == 503, exc
        assert headers["retry-after"] == "1"
        assert headers["content-type"] == "application/problem+json"


async def test_other_database_errors_stay_500_problems():
    status, headers = await status_of(DBAPIError("SELECT 1", {}, ValueError("bug")))
    assert status == 500
    assert headers["content-type"] == "application/problem+json"
