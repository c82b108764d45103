"""A database that is away answers a retryable 503 problem, not a 500; a bug answers a 500 problem and
the connection stays usable; a NUL in a query string is a 422 before any route runs."""
from __future__ import annotations

import asyncio
import logging
import socket

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.errors import install_error_handlers
from shared.http import RequestContextMiddleware
from shared.metrics import Metrics
from tests.conftest import eventually


class TooManyConnectionsError(Exception):
    """Named like asyncpg's: the handler recognises drivers' errors by class name."""


def app_raising(exc: Exception, middleware: str = "inside"):
    """A route that raises: the request-context middleware inside the FastAPI app as the services
    have it, or `outside` it, wrapping the whole app as the gateway has it for its own routes."""
    app = FastAPI()
    install_error_handlers(app)
    if middleware == "inside":
        app.add_middleware(RequestContextMiddleware, metrics=Metrics("test"))

    @app.get("/boom")
    async def boom():
        raise exc

    @app.get("/ok")
    async def ok(q: str | None = None):
        return {"q": q}

    return app if middleware == "inside" else RequestContextMiddleware(app, metrics=Metrics("test"))


async def status_of(exc: Exception, middleware: str = "inside") -> tuple[int, dict]:
    transport = httpx.ASGITransport(app=app_raising(exc, middleware))  # the middleware keeps the error from the server
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


class _PostgresError(Exception):
    """What the asyncpg dialect raises: its SQLSTATE on `sqlstate`."""

    def __init__(self, message: str, sqlstate: str):
        super().__init__(message)
        self.sqlstate = sqlstate


async def test_a_transaction_undone_by_a_concurrent_one_is_a_503_to_retry():
    """A deadlock's victim or a serialization failure: the same request succeeds again, never a 500."""
    for sqlstate in ("40P01", "40001"):
        status, headers = await status_of(DBAPIError("SELECT 1", {}, _PostgresError("deadlock detected", sqlstate)))
        assert (status, headers["retry-after"], headers["content-type"]) == (503, "1", "application/problem+json")
    status, _ = await status_of(DBAPIError("SELECT 1", {}, _PostgresError("division by zero", "22012")))
    assert status == 500


@pytest.mark.parametrize("middleware", ["inside", "outside"])
async def test_other_database_errors_stay_500_problems(middleware: str):
    status, headers = await status_of(DBAPIError("SELECT 1", {}, ValueError("bug")), middleware)
    assert status == 500
    assert headers["content-type"] == "application/problem+json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> tuple[int, bytes]:
    writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return int(lines[0].split()[1]), await asyncio.wait_for(reader.readexactly(length), 10)


@pytest.mark.parametrize("middleware", ["inside", "outside"])
async def test_a_500_leaves_the_kept_alive_connection_serving(caplog: pytest.LogCaptureFixture, middleware: str):
    """Starlette raises the app's error again after its 500 has gone out: uvicorn then logged it a
    second time and closed the connection, so a client's next request on it (or the gateway's, on
    its kept-alive upstream connection) failed. The error is logged once and the connection serves on."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app_raising(RuntimeError("bug"), middleware), host="127.0.0.1", port=port,
                                           http="httptools", lifespan="off", log_level="error"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, timeout=10, interval=0.01, what="the server listening")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with caplog.at_level(logging.ERROR):
            status, body = await _exchange(reader, writer, "/boom")
            assert status == 500 and b"an unexpected error occurred" in body
            status, body = await _exchange(reader, writer, "/ok?q=still-here")
        assert status == 200 and body == b'{"q":"still-here"}'
        logged = [r for r in caplog.records if r.exc_info]
        assert len(logged) == 1 and logged[0].getMessage() == "unhandled error", [r.getMessage() for r in logged]
        writer.close()
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("middleware", ["inside", "outside"])
async def test_a_nul_in_the_query_string_is_a_422_naming_the_parameter(middleware: str):
    transport = httpx.ASGITransport(app=app_raising(RuntimeError("unused"), middleware))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.get("/ok", params={"q": "a\x00b", "other": "fine"})
        raw = await client.get("/ok?q%00=1")
        control = await client.get("/ok", params={"q": "a%00b as text"})
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"] == [{"loc": ["query", "q"], "msg": "NUL characters (%00) are not allowed"}]
    assert raw.status_code == 422 and raw.json()["errors"][0]["loc"] == ["query", "q%00"]
    assert control.status_code == 200 and control.json() == {"q": "a%00b as text"}
