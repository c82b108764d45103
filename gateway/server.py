"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol, with a fast path for proxied requests.

Run the gateway with `uvicorn gateway.app:create_app --factory --http gateway.server:GatewayHttpProtocol`.
uvicorn still owns the ASGI side (its request cycle, graceful shutdown, the concurrency limit) and
every request the fast path does not take (admin, docs, OpenAPI, metrics). A proxied request skips
the ASGI machinery: once its body is in, the proxy serves it from callbacks (`Proxy.serve`) or, when
it cannot, runs `Proxy.answer` in a task; either way the answer leaves in one write, head and body.

Why (measured with `python -m bench gateway_overhead`, see bench/README.md): on a 1-client read,
uvicorn's per-request ASGI cycle and its two writes per answer (head, then body) alone added about
0.25 ms, close to the 0.3 ms budget for the whole gateway; an asyncio protocol that writes each
answer once added almost nothing.

Why this is uvicorn's protocol subclassed, and not uvicorn's protocol as it is: the connection edge
needs what uvicorn's protocol does not do, so going back to it would still mean patching it.
uvicorn parses every byte it has read whatever the client does (pipelined requests pile up, one
RequestResponseCycle each, and its answers' writes do not stop the reading), writes a 400 ahead of
answers still due, drops the answer of a client that half-closed, and has no limit on a head's
time. So this class owns the connection's edge: how many requests it holds, when it reads, the order
of its writes. The price is coupling to uvicorn's and httptools' internals (the parser callbacks,
`RequestResponseCycle`, `FlowControl`, `_start_asgi_task`), which is why pyproject.toml pins both
to the exact versions this was written against; tests/unit/test_gateway_server.py fails when the
installed versions differ, so an upgrade starts by re-reading uvicorn's httptools_impl.py against
this file. A standalone asyncio protocol would remove the coupling but re-implement uvicorn's ASGI
cycle, which the admin and docs routes need; not worth it while the pins hold.

The connection's edge, what one client can make the gateway hold:
- at most `MAX_PIPELINED` requests wait behind the one being answered; beyond, the connection is
  not read (`pause_reading`), and bytes already read but not parsed wait, unparsed, until answers
  drain (the parser is fed in slices so one large read cannot queue hundreds of requests);
- while the transport's write buffer is over its high-water mark (`pause_writing`), nothing is
  read and no waiting request is started; `resume_writing` restarts both;
- a refusal of the connection itself (400 unreadable, 408 head too slow, 431 head too large) is
  written after the answers still due to earlier requests, then the connection closes;
- a client that half-closes (FIN after its requests) gets every answer due, then the close;
- an answer to `Expect: 100-continue` given before the body was asked for (a refusal at the head)
  closes the connection: whether the body follows is unknown, so no next request can be found.
- on a graceful stop (SIGTERM) every request the connection holds is answered, one whose head or
  body is still arriving included, the last with `connection: close`; an idle connection closes.
It also bounds the time a request head may take (`VMC_GATEWAY_HEADER_READ_TIMEOUT_SECONDS`) and its
size (`VMC_GATEWAY_MAX_HEAD_BYTES`), and closes a connection idle for the keep-alive time.

A request takes the ASGI route instead when the fast path would change what it gets: a HEAD request,
HTTP/1.0, an upgrade, a request pipelined behind an unfinished one, a cross-origin request when CORS
is configured (the CORS middleware answers it), or when uvicorn's concurrency limit is reached.
"""
from __future__ import annotations

import asyncio
import urllib.parse

import httptools
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from gateway.headers import WATCHED, WATCHED_HEADERS
from gateway.proxy import WHOLE_BODY
from gateway.routing import owner_of
from shared.errors import PROBLEM_JSON, problem_body

# Requests a connection may have waiting behind the one being answered (pipelining) before it is not
# read any more: what one client can make the gateway hold is bounded whatever it sends.
MAX_PIPELINED = 16
# The parser is fed at most this much at a time, so that the limit above is checked between slices:
# one read (up to 256 KiB) of small pipelined GETs would otherwise be parsed into a thousand requests.
FEED_SLICE = 8192


async def _nothing(scope, receive, send) -> None:
    """The app behind the X-Forwarded-* rewrite: the rewrite of the scope is all that is wanted."""


def find_gateway(app):
    """The Gateway instance inside uvicorn's middleware wrappers (None if this is another app)."""
    from gateway.app import Gateway  # the app module imports much; the protocol needs only the class

    seen = 0
    while app is not None and not isinstance(app, Gateway) and seen < 10:
        app, seen = getattr(app, "app", None), seen + 1
    return app if isinstance(app, Gateway) else None


class _HeadTooLarge(Exception):
    """Raised from the parser's callback when a whole head turns out over the limit."""


class _Unwaited:
    """Stands for a cycle's message event where nobody waits on it."""

    @staticmethod
    def set() -> None:
        pass


class _Fast:
    """A proxied request on the fast path: of uvicorn's RequestResponseCycle, only what the protocol's
    bookkeeping reads (no ASGI channel, no asyncio.Event). Its body is gathered until it is whole; a
    body still coming when the bytes at hand are parsed turns it into a real cycle (`_to_cycle`)."""

    __slots__ = ("scope", "chunks", "complete", "keep_alive", "response_complete", "disconnected")
    message_event = _Unwaited

    def __init__(self, scope: dict, keep_alive: bool):
        self.scope = scope
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False


class _Flow(FlowControl):
    """uvicorn's flow control, whose resume_reading (uvicorn's request cycle calls it each time it
    wants body bytes, and after each answer) waits while the connection must not be read."""

    def __init__(self, transport: asyncio.Transport, protocol: GatewayHttpProtocol):
        super().__init__(transport)
        self.protocol = protocol

    def resume_reading(self) -> None:
        if not self.protocol.hold_reading():
            super().resume_reading()


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gateway = find_gateway(self.app)
        self.max_head_bytes = self.gateway.settings.max_head_bytes if self.gateway is not None else float("inf")
        # The same X-Forwarded-For / -Proto rewrite uvicorn applies to ASGI requests (trusted hosts
        # only): the failed-authentication throttle counts per client address, not per load balancer.
        self.forwarded = (
            ProxyHeadersMiddleware(_nothing, trusted_hosts=self.config.forwarded_allow_ips) if self.config.proxy_headers else None
        )

    # A head that takes too long. The timer is armed only when a head spans several reads, so the
    # usual request (its head in one packet) costs nothing.
    head_timer: asyncio.TimerHandle | None = None
    in_head = False

    # Bytes received since the current request head began (or the last request ended), held to
    # `max_head_bytes`; not counted while a body is arriving.
    head_bytes = 0
    in_body = False

    # A proxied request whose head the parser has read: dispatched once the bytes at hand are parsed,
    # so that a body that came with its head is handed over whole.
    pending: _Fast | None = None

    # Keep-alive: one timer per idle spell, not one per request. After an answer the connection may
    # stay idle until `idle_until`; bytes arriving clear it (uvicorn cancels and re-creates a timer
    # on every request instead).
    idle_until: float | None = None
    idle_timer: asyncio.TimerHandle | None = None

    # Bytes read but not parsed while MAX_PIPELINED requests wait (fed once answers drain).
    held = b""
    feed_scheduled = False
    # A refusal of the connection (400, 408, 431) waiting for the answers due before it.
    refusal: bytes | None = None
    # The client half-closed: answer what is due, then close.
    eof = False
    # An answer was written while writes were backed up: the next waiting request starts on resume_writing.
    next_deferred = False
    # The server is stopping (SIGTERM): every request head parsed from now on is the connection's last.
    stopping = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection has the keep-alive time to send its first byte, as an idle kept-alive one
        has for its next request (uvicorn keeps a connection that never sends anything open for ever,
        so silent connections could take every file descriptor)."""
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        self.idle_until = self.loop.time() + self.timeout_keep_alive
        self.idle_timer = self.loop.call_at(self.idle_until, self._idle_check)

    def data_received(self, data: bytes) -> None:
        self.idle_until = None
        if self.held or self.refusal is not None:  # read before the pause took effect: it waits its turn
            if self.refusal is None:
                self.held += data
            return
        if len(data) <= FEED_SLICE:
            self._feed(data)
            return
        view = memoryview(data)
        for offset in range(0, len(data), FEED_SLICE):
            if self.transport.is_closing() or self.refusal is not None:
                return
            if len(self.pipeline) >= MAX_PIPELINED:  # enough waiting: the rest is parsed as they drain
                self.held = data[offset:]
                self.flow.pause_reading()
                return
            self._feed(view[offset:offset + FEED_SLICE])

    def _feed(self, data) -> None:
        if not self.in_body:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._head_too_large()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        if self.pending is not None:  # even before a refusal: its answer is due first
            fast, self.pending = self.pending, None
            if not self.transport.is_closing():
                self._dispatch(fast)
        if self.in_head and self.gateway is not None and self.refusal is None and not self.transport.is_closing():
            if self.head_bytes > self.max_head_bytes:  # a head still coming, already too large
                self._head_too_large()
            elif self.head_timer is None:
                self.head_timer = self.loop.call_later(self.gateway.settings.header_read_timeout_seconds, self._head_timed_out)

    def _feed_held(self) -> None:
        """Parse the bytes held while too many requests waited, now that some were answered."""
        self.feed_scheduled = False
        held, self.held = self.held, b""
        if held and not self.transport.is_closing():
            self.data_received(held)
        if self.held or self.transport.is_closing():
            return
        if self.eof and not self._answers_due():  # what the half-closed client sent last was no whole request
            self.transport.close()
        else:
            self.flow.resume_reading()

    def hold_reading(self) -> bool:
        """Whether the connection must not be read now: its writes are backed up, enough requests
        wait, bytes already read wait to be parsed, or it is closing after what is due."""
        return (self.flow.write_paused or len(self.pipeline) >= MAX_PIPELINED or bool(self.held)
                or self.refusal is not None or self.eof)

    def pause_writing(self) -> None:
        """The transport's write buffer is over its high-water mark (the client does not read): stop
        reading and starting waiting requests until it drains."""
        self.flow.pause_writing()
        self.flow.pause_reading()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self.transport.is_closing():
            return
        if self.next_deferred and self.pipeline:
            self.next_deferred = False
            self._next_pipelined()
        elif self.refusal is not None and not self._answers_due():
            self._write_refusal()
        self.flow.resume_reading()

    def eof_received(self) -> bool:
        """The client half-closed. A request still arriving will never be whole: close. Otherwise keep
        the connection open for the answers due (returning True), and close after the last."""
        self.eof = True
        if self.in_head or self.in_body or not (self._answers_due() or self.held):
            return False
        return True

    def _answers_due(self) -> bool:
        return self.pending is not None or (self.cycle is not None and not self.cycle.response_complete) or bool(self.pipeline)

    def on_message_begin(self) -> None:
        # uvicorn's scope is built only for a request that goes to ASGI (`_asgi_headers_complete`).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.watched: dict[bytes, bytes] = {}
        self.in_head = True
        self.head_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in WATCHED_HEADERS:  # noted once here: no check scans the header list again
            if name not in self.watched:
                self.watched[name] = value
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4

    def shutdown(self) -> None:
        """Graceful stop: uvicorn calls this on every connection once it stops accepting new ones.
        uvicorn's own marks the newest request held (being answered, pipelined, or its body arriving)
        as the last, answered with `connection: close`, and closes a connection holding none, which
        cuts a request whose head is half received. Such a request is read and answered here instead
        (its head still has `header_read_timeout_seconds`), and is the connection's last."""
        self.stopping = True
        if self.in_head:
            return  # on_headers_complete marks it as the last
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self.held, self.refusal = b"", None
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.held and not self.transport.is_closing():  # the rest of the head is here, waiting its turn
            self.head_timer = self.loop.call_later(self.gateway.settings.header_read_timeout_seconds, self._head_timed_out)
            return
        if self.in_head and not self.transport.is_closing():
            self._refuse_and_close(408, "the request head was not received in time", title="Request timeout", slug="request-timeout")

    def _head_too_large(self) -> None:
        self._stop_head_timer()
        self._refuse_and_close(431, f"the request head exceeds {self.max_head_bytes} bytes", title="Request header fields too large",
                               slug="head-too-large")

    def send_400_response(self, msg: str) -> None:
        """What the parser cannot read (a control character in a header, a malformed request line or
        framing): a problem like every other refusal (uvicorn answers plain text), then the connection
        closes, since where the next request would begin is unknown."""
        self._refuse_and_close(400, "the request is not valid HTTP/1.1 (request line, a header or the body's framing)")

    def _refuse_and_close(self, status: int, detail: str, **kw) -> None:
        """A refusal of the connection: written now, or after the answers due to earlier (pipelined)
        requests, which the client pairs with its requests in order. Nothing more is read or parsed."""
        body = problem_body(status, detail, **kw)
        self.refusal = (STATUS_LINE[status] + b"content-type: " + PROBLEM_JSON.encode() + b"\r\ncontent-length: "
                        + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.held = b""
        self.flow.pause_reading()
        if not self._answers_due():
            self._write_refusal()

    def _write_refusal(self) -> None:
        self.transport.write(self.refusal)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        # Measured as it was parsed (the bytes read may hold earlier pipelined requests or a body).
        if len(self.url) + self.head_size > self.max_head_bytes:
            raise _HeadTooLarge  # ends the parsing: _feed answers
        self.in_body, self.head_bytes = True, 0
        proxy = self.gateway.proxy if self.gateway is not None else None
        if proxy is None or not self._fast_path_allowed():
            self._asgi_headers_complete()
            return
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        if owner_of(path) is None:  # only a percent-encoded prefix gets here: ASGI decides
            self._asgi_headers_complete()
            return
        scope = {
            "type": "http", "http_version": "1.1", "method": self.parser.get_method().decode("ascii"),
            "scheme": self.scheme, "path": path, "raw_path": raw_path, "query_string": parsed.query or b"",
            "root_path": self.root_path, "headers": self.headers, "client": self.client, "server": self.server,
            WATCHED: self.watched,
        }
        self.cycle = self.pending = _Fast(scope, self.parser.should_keep_alive() and not self.stopping)

    def _asgi_headers_complete(self) -> None:
        """uvicorn's own handling: the scope its on_message_begin would have made, then its cycle."""
        self.scope = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        super().on_headers_complete()
        if self.stopping:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is _Fast:
            cycle.chunks.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.in_body = False
        cycle = self.cycle
        if type(cycle) is _Fast:
            cycle.complete = True
        else:
            super().on_message_complete()

    def _fast_path_allowed(self) -> bool:
        if self.cycle is not None and not self.cycle.response_complete:
            return False  # pipelined behind an unfinished request: uvicorn queues it
        if self.parser.should_upgrade() or self.parser.get_http_version() != "1.1" or self.parser.get_method() == b"HEAD":
            return False
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            return False
        if self.gateway.cors and b"origin" in self.watched:
            return False
        # Cheap test before the URL is parsed: proxied paths all start so (owner_of decides later).
        return self.url.startswith(b"/api/v1/")

    def _dispatch(self, fast: _Fast) -> None:
        """With the whole body at hand the proxy serves the request from callbacks when it can
        (`Proxy.serve`); else, or while body bytes are still to come, a task runs `Proxy.answer`."""
        proxy = self.gateway.proxy
        scope = fast.scope
        watched = scope[WATCHED]
        if self.forwarded is not None and (b"x-forwarded-for" in watched or b"x-forwarded-proto" in watched):
            _run_now(self.forwarded(scope, None, None))
        if fast.complete:
            chunks = fast.chunks
            scope[WHOLE_BODY] = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            try:
                if proxy.serve(scope, lambda status, headers, body: self._reply(fast, status, headers, body)):
                    return
            except Exception:  # a bug in a check before the request was admitted: `answer` still answers it
                self.logger.exception("exception on the gateway's callback path")
            cycle = fast
        else:
            cycle = self._to_cycle(fast)
        task = self.loop.create_task(self._exchange(cycle, proxy))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _to_cycle(self, fast: _Fast) -> RequestResponseCycle:
        """A body still coming: uvicorn's cycle takes over the request (its receive() streams the rest,
        answers Expect: 100-continue, and applies flow control)."""
        cycle = RequestResponseCycle(
            scope=fast.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=fast.keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.body = b"".join(fast.chunks)
        cycle.disconnected = fast.disconnected
        if self.cycle is fast:
            self.cycle = cycle
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        return cycle

    async def _exchange(self, cycle: _Fast | RequestResponseCycle, proxy) -> None:
        try:
            receive = cycle.receive if type(cycle) is RequestResponseCycle else _receive_whole(cycle.scope[WHOLE_BODY])
            status, headers, body = await proxy.answer(cycle.scope, receive)
            if self.flow.write_paused and not cycle.disconnected:
                await self.flow.drain()
        except asyncio.CancelledError:  # shutting down
            self.transport.close()
            raise
        except Exception:  # answer() turns every error into a problem answer: only a bug gets here
            self.logger.exception("exception on the gateway's fast path")
            self.transport.close()
            return
        self._reply(cycle, status, headers, body)

    def _reply(self, cycle: _Fast | RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The answer in one write, then the connection's bookkeeping (keep-alive, the next pipelined request)."""
        cycle.response_complete = True
        if cycle.disconnected:
            return
        if self._continue_unanswered(cycle):
            cycle.keep_alive = False
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:  # date (and server unless disabled)
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.transport.write(b"".join(parts))
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def on_response_complete(self) -> None:
        """After an answer (ASGI or not): the next waiting request, the refusal or the close that
        waited for it, or one keep-alive timer per idle spell."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the answered one when it is the last parsed (otherwise its body was whole)
        if cycle is not None and cycle.response_complete and self._continue_unanswered(cycle):  # an ASGI answer
            self.transport.close()
            return
        if self.held and not self.feed_scheduled and len(self.pipeline) < MAX_PIPELINED:
            self.feed_scheduled = True  # not from here: this may run inside _feed, from a reply
            self.loop.call_soon(self._feed_held)
        if self.pipeline:
            if self.flow.write_paused:
                self.next_deferred = True  # resume_writing starts it
            else:
                self._next_pipelined()
            return
        if self.refusal is not None:
            if not self.flow.write_paused:  # else resume_writing writes it
                self._write_refusal()
            return
        if self.eof:
            if not self.held:
                self.transport.close()
            return
        self.flow.resume_reading()
        self.idle_until = self.loop.time() + self.timeout_keep_alive
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_at(self.idle_until, self._idle_check)

    def _next_pipelined(self) -> None:
        cycle, app = self.pipeline.pop()
        self._start_asgi_task(cycle, app)
        self.flow.resume_reading()

    def _continue_unanswered(self, cycle) -> bool:
        """An answer to `Expect: 100-continue` given before any of the body came, the body still due:
        the client may send it or not (RFC 9110 §10.1.1), so where its next request begins is unknown.
        Only the last head parsed can be such a request (`expect_100_continue` is that head's)."""
        return (self.expect_100_continue and cycle is self.cycle and type(cycle) is RequestResponseCycle
                and cycle.more_body and not cycle.body)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.idle_until is None or self.transport.is_closing():
            return  # busy again: the next answer starts a new idle spell
        if self.loop.time() < self.idle_until:
            self.idle_timer = self.loop.call_at(self.idle_until, self._idle_check)
        else:
            self.transport.close()


def _receive_whole(body: bytes):
    """ASGI's receive() for a request whose whole body is at hand (also in its scope, where
    `Proxy.answer` takes it from): the body in one message, then the end of the exchange."""
    messages = [{"type": "http.disconnect"}, {"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop() if len(messages) > 1 else messages[0]

    return receive


def _run_now(coroutine) -> None:
    """Run a coroutine that never waits (uvicorn's X-Forwarded-* rewrite in front of `_nothing`)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the X-Forwarded-* rewrite waited")
