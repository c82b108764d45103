"""A small HTTP/1.1 keep-alive client for the gateway's upstream services (asyncio Protocol + httptools).

Measured cheaper per request than aiohttp's client: the gateway only needs buffered request and
response bodies on plain HTTP to a few known hosts, so none of aiohttp's generality is paid for.
"""
from __future__ import annotations

import asyncio
import time

import httptools

IDLE_SECONDS = 4.0  # below uvicorn's 5 s keep-alive, so the server never closes a connection we are about to use
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class UpstreamError(Exception):
    """Base of the client's errors."""


class ConnectFailed(UpstreamError):
    """Refused or timed out while connecting: the service never saw the request."""


class ReadTimeout(UpstreamError):
    """No complete answer within the total time limit (the work may be under way)."""


class Dropped(UpstreamError):
    """The connection closed before any byte of the answer arrived."""


class Incomplete(UpstreamError):
    """The answer was cut off or could not be parsed."""


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status = status
        self.headers = headers  # names lower-cased, as received
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future | None = None
        self.parser = None
        self.head_only = False
        self.received = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            error = Incomplete("connection closed mid-answer") if self.received else Dropped("connection closed before the answer")
            self.waiter.set_exception(error)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.parser is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Incomplete(f"unparsable answer: {exc}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:  # a HEAD answer has no body whatever Content-Length says
            self.keep_alive = False
            self._finish()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._finish()

    def _finish(self) -> None:
        self.parser = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(Response(self.status, self.headers, b"".join(self.body)))

    def _fail(self, error: Exception) -> None:
        self.parser = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.close()

    def _timed_out(self) -> None:
        self._fail(ReadTimeout("no complete answer in time"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, method: str, head: bytes, body: bytes, deadline: float) -> Response:
        if self.closed:
            raise Dropped("connection already closed")
        self.waiter = self.loop.create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = method == "HEAD"
        self.received = False
        self.headers, self.body = [], []
        timer = self.loop.call_at(deadline, self._timed_out)
        try:
            self.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                self.transport.write(body)
            return await self.waiter
        finally:
            timer.cancel()
            self.waiter = None


class _Pool:
    def __init__(self, limit: int):
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(limit)


class UpstreamClient:
    """Keep-alive pools per (host, port), reused last-in first-out, at most `limit` connections each."""

    def __init__(self, limit: int = 128, idle_seconds: float = IDLE_SECONDS):
        self.limit = limit
        self.idle_seconds = idle_seconds
        self.pools: dict[tuple[str, int], _Pool] = {}

    async def close(self) -> None:
        for pool in self.pools.values():
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()

    async def _connect(self, host: str, port: int, connect_timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), host, port)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc!r}") from None
        return conn

    def _reusable(self, pool: _Pool) -> _Connection | None:
        stale = time.monotonic() - self.idle_seconds
        while pool.idle:
            conn = pool.idle.pop()
            if not conn.closed and conn.idle_since > stale:
                return conn
            conn.close()
        return None

    async def request(
        self, method: str, host: str, port: int, target: str, headers: list[tuple[bytes, bytes]], body: bytes = b"",
        *, timeout: float, connect_timeout: float, host_header: bytes | None = None,
    ) -> Response:
        """Send one request and buffer the answer. `headers` must not hold Host, Content-Length or
        Connection. A connection that dropped before any answer byte is retried once on a fresh
        connection for idempotent methods only (a kept-alive one was most likely closed by the server
        while idle; the gateway relied on the same single retry with aiohttp)."""
        key = (host, port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = _Pool(self.limit)
        parts = [method.encode(), b" ", target.encode("latin-1"), b" HTTP/1.1\r\nhost: ",
                 host_header or f"{host}:{port}".encode(), b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with pool.slots:
            conn = self._reusable(pool)
            for attempt in range(2):
                if conn is None:
                    conn = await self._connect(host, port, min(connect_timeout, max(0.0, deadline - loop.time())))
                try:
                    response = await conn.exchange(method, head, body, deadline)
                except Dropped:
                    conn.close()
                    if attempt == 0 and method in IDEMPOTENT:
                        conn = None
                        continue
                    raise
                except BaseException:
                    conn.close()
                    raise
                if conn.keep_alive and not conn.closed:
                    conn.idle_since = time.monotonic()
                    pool.idle.append(conn)
                else:
                    conn.close()
                return response
        raise AssertionError("unreachable")
