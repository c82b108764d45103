"""A small HTTP/1.1 keep-alive client for the gateway's upstream services (asyncio Protocol + httptools).

Measured cheaper per request than aiohttp's client: the gateway only needs buffered request and
response bodies on plain HTTP to a few known hosts, so none of aiohttp's generality is paid for.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import httptools

IDLE_SECONDS = 4.0  # below the services' keep-alive (deploy/processes.py SERVICE_KEEP_ALIVE_SECONDS, and uvicorn's default 5 s), so a service never closes a connection we are about to use
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
CONNECT_RETRY_DELAY = 0.05  # a service restarting: its port refuses for a moment


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
    """One keep-alive connection; serves one request at a time.

    `send` is the core: it reports the answer (or the error) to a callback, so the gateway's fast
    path forwards with no task or future; `exchange` is the same as a coroutine. One parser serves
    the connection's answers in turn, and one timer its time limits (re-armed only when it fires
    while a request is out, or when a request's limit comes before the armed time): neither is made
    again for every request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.on_done: Callable[[Response | None, UpstreamError | None], None] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.expecting = False  # a request is out and its answer not yet complete
        self.deadline = 0.0  # of the request out
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
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
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.on_done is not None:
            self._report(None, Incomplete("connection closed mid-answer") if self.received else Dropped("connection closed before the answer"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        if not self.expecting:  # bytes nobody asked for: the connection is unusable
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
        if self.expecting:
            self._finish()

    def _finish(self) -> None:
        self.expecting = False
        if self.on_done is not None:
            body = self.body
            self._report(Response(self.status, self.headers, body[0] if len(body) == 1 else b"".join(body)), None)

    def _fail(self, error: UpstreamError) -> None:
        self.expecting = False
        self.close()
        if self.on_done is not None:
            self._report(None, error)

    def _report(self, response: Response | None, error: UpstreamError | None) -> None:
        on_done, self.on_done = self.on_done, None
        on_done(response, error)

    def _check_deadline(self) -> None:
        self.timer = None
        if not self.expecting or self.closed:
            return
        if self.loop.time() >= self.deadline:
            self._fail(ReadTimeout("no complete answer in time"))
        else:
            self._arm(self.deadline)

    def _arm(self, at: float) -> None:
        self.timer = self.loop.call_at(at, self._check_deadline)
        self.timer_at = at

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, method: str, head: bytes, body: bytes, deadline: float,
             on_done: Callable[[Response | None, UpstreamError | None], None]) -> None:
        """Send one request; `on_done(response, None)` or `on_done(None, error)` follows, exactly once
        (never from within this call)."""
        if self.closed or self.transport.is_closing():
            self.closed = True
            self.loop.call_soon(on_done, None, Dropped("connection already closed"))
            return
        self.expecting = True
        self.head_only = method == "HEAD"
        self.received = False
        self.headers, self.body = [], []
        self.on_done = on_done
        self.deadline = deadline
        if self.timer is None:
            self._arm(deadline)
        elif self.timer_at > deadline:
            self.timer.cancel()
            self._arm(deadline)
        if len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)

    async def exchange(self, method: str, head: bytes, body: bytes, deadline: float) -> Response:
        waiter = self.loop.create_future()

        def done(response: Response | None, error: UpstreamError | None) -> None:
            if waiter.done():
                return
            if error is None:
                waiter.set_result(response)
            else:
                waiter.set_exception(error)

        self.send(method, head, body, deadline, done)
        try:
            return await waiter
        except asyncio.CancelledError:  # the caller went away (it closes the connection): no report due
            self.on_done = None
            raise


class _Pool:
    """The connections to one upstream: idle ones (last in, first out) and at most `limit` in use."""

    def __init__(self, limit: int):
        self.idle: list[_Connection] = []
        self.limit = limit
        self.busy = 0
        self.waiters: deque[asyncio.Future] = deque()

    def take_now(self) -> bool:
        if self.busy < self.limit and not self.waiters:
            self.busy += 1
            return True
        return False

    async def take(self) -> None:
        if self.take_now():
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # the slot is handed over by give()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over just as the caller went away: pass it on
            else:
                self.waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the waiter: busy stays the same
                return
        self.busy -= 1


def retry_delay(method: str, error: BaseException, attempt: int) -> float | None:
    """The gateway's one retry policy: whether a forward that failed on try `attempt` (0 is the
    first) is sent once more, and after how many seconds (None: the failure is the answer).

    Two tries at most, and only when the service cannot have acted on the request: the connection was
    refused or not made in time (tried again a moment later, whatever the method: no byte of the
    request was sent, so a POST to a replica that is restarting is safe to send again), or, for
    idempotent methods only, it closed before any byte of the answer (at once, on a fresh connection:
    a kept-alive one was most likely closed by the service while idle, but a POST may have been read
    and acted on). Never after a timeout or a cut-off answer: the work may be under way. Callers:
    `Proxy._send` and the callback path's `_Flight.on_upstream`."""
    if attempt >= 1:
        return None
    if isinstance(error, ConnectFailed):
        return CONNECT_RETRY_DELAY
    if isinstance(error, Dropped) and method in IDEMPOTENT:
        return 0.0
    return None


def request_head(method: str, target: str, host_header: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """An HTTP/1.1 request head. `headers` must not hold Host, Content-Length or Connection."""
    parts = [method.encode(), b" ", target.encode("latin-1"), b" HTTP/1.1\r\nhost: ", host_header,
             b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


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

    def _pool(self, host: str, port: int) -> _Pool:
        pool = self.pools.get((host, port))
        if pool is None:
            pool = self.pools[(host, port)] = _Pool(self.limit)
        return pool

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

    def take_idle(self, host: str, port: int) -> _Connection | None:
        """A kept-alive connection ready for a request, with its slot taken, or None (none idle, or
        the pool is full): for a caller that will not wait. Give it back with `put_back`."""
        pool = self._pool(host, port)
        if not pool.idle or not pool.take_now():
            return None
        conn = self._reusable(pool)
        if conn is None:
            pool.give()
        return conn

    def put_back(self, host: str, port: int, conn: _Connection, used: bool = True) -> None:
        """Return a connection from `take_idle` (or `request`) and its slot: kept if it can serve
        again, closed otherwise."""
        pool = self._pool(host, port)
        if conn.keep_alive and not conn.closed and not conn.expecting and conn.on_done is None:
            if used:
                conn.idle_since = time.monotonic()
            pool.idle.append(conn)
        else:
            conn.close()
        pool.give()

    async def request(
        self, method: str, host: str, port: int, target: str, headers: list[tuple[bytes, bytes]], body: bytes = b"",
        *, timeout: float, connect_timeout: float, host_header: bytes | None = None, reuse: bool = True,
    ) -> Response:
        """Send one request, once, and buffer the answer. `headers` must not hold Host, Content-Length
        or Connection. `reuse=False` sends it on a fresh connection (a retry after a kept-alive one
        dropped: see `retry_delay`, which decides whether there is one)."""
        pool = self._pool(host, port)
        head = request_head(method, target, host_header or f"{host}:{port}".encode(), headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await pool.take()
        conn = None
        try:
            conn = self._reusable(pool) if reuse else None
            if conn is None:
                conn = await self._connect(host, port, min(connect_timeout, max(0.0, deadline - loop.time())))
            try:
                return await conn.exchange(method, head, body, deadline)
            except BaseException:
                conn.close()
                raise
        finally:
            if conn is not None:
                self.put_back(host, port, conn)
            else:
                pool.give()
