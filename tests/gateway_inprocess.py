"""A gateway run inside the test process (its lifespan started, HTTP through httpx's ASGI transport).

For tests that need a second replica, or upstreams the stack does not have (a service that hangs,
a port where nothing listens). It shares the stack's gateway database and internal secret, so the
keys the stack knows work here too.
"""
from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from gateway.app import Gateway, create_app
from gateway.settings import GatewaySettings
from tests.harness import SERVICES, Stack


def settings_for(stack: Stack, **overrides) -> GatewaySettings:
    values = {
        "data_dir": tempfile.mkdtemp(prefix="vmc-gw-"),
        "database_url": stack.db_urls["gateway"],
        "internal_secret": stack.secret,
        **{f"{name}_url": stack.urls[name] for name in SERVICES},
        "log_level": "WARNING",
    }
    values.update(overrides)
    return GatewaySettings(**values)


@asynccontextmanager
async def running_gateway(settings: GatewaySettings, key: str | None = None) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.inner.router.lifespan_context(app.inner):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test", headers=headers, timeout=30
        ) as client:
            yield app, client


async def answer_ok(writer: asyncio.StreamWriter) -> None:
    """A fake service's whole answer: 200 with a small JSON body."""
    body = b'{"ok": true}'
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()


class SilentUpstream:
    """A TCP server that accepts connections and never answers: a service that hangs."""

    def __init__(self):
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0

    async def __aenter__(self) -> "SilentUpstream":
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await reader.read()  # until the gateway gives up and closes
            finally:
                writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()


class TinyUpstream:
    """A minimal HTTP/1.1 server on a given port answering every request 200 `{"ok": true}`; the next
    `drop` requests are read and then the connection is closed without an answer (a crash mid-request);
    requests whose target ends with one of `hang` are never answered (a long job that hangs)."""

    def __init__(self, port: int, drop: int = 0, hang: tuple[bytes, ...] = ()):
        self.port = port
        self.drop = drop
        self.hang = hang
        self.server: asyncio.base_events.Server | None = None
        self.requests = 0

    async def __aenter__(self) -> "TinyUpstream":
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    if length:
                        await reader.readexactly(length)
                    if self.hang and head.split(b" ", 2)[1].split(b"?")[0].endswith(self.hang):
                        await reader.read()  # until the gateway gives up and closes
                        return
                    self.requests += 1
                    if self.drop > 0:
                        self.drop -= 1
                        return
                    await answer_ok(writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
