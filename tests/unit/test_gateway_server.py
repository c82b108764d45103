"""The gateway's HTTP protocol (gateway/server.py), driven byte by byte through a recording transport.

The proxy is a fake here (its answers are the subject of the integration tests, which run the real
protocol in the stack): these tests pin down what the protocol itself promises — a proxied request
reaches `answer()` with the same scope uvicorn would build and leaves in one write; everything it
does not take goes to the ASGI app; keep-alive, pipelining, bodies and forwarded addresses behave.
"""
from __future__ import annotations

import asyncio
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.app import create_app
from gateway.server import FEED_SLICE, MAX_PIPELINED, GatewayHttpProtocol
from gateway.settings import GatewaySettings
from gateway.headers import header
from tests.conftest import eventually

ANSWER = b'{"ok":true}'


class Transport(asyncio.Transport):
    def __init__(self, peer: str = "127.0.0.1"):
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.peer = peer

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": (self.peer, 50000)}.get(name, default)

    reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    @property
    def output(self) -> bytes:
        return b"".join(self.writes)


class FakeProxy:
    """Records how each request arrived: through `answer` (the fast path) or as an ASGI app."""

    def __init__(self):
        self.fast: list[tuple[dict, bytes]] = []
        self.asgi: list[dict] = []
        self.hold: asyncio.Event | None = None  # when set, answers wait for it
        self.serving = False  # when set, `serve` takes each request and keeps its reply callback
        self.served: list[tuple[dict, object]] = []  # (scope, reply) of the requests `serve` took

    def serve(self, scope, reply) -> bool:
        if not self.serving:
            return False
        self.served.append((dict(scope), reply))
        return True

    async def answer(self, scope, receive):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.fast.append((dict(scope), body))
        if self.hold is not None:
            await self.hold.wait()
        return 200, [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())], ANSWER

    async def __call__(self, scope, receive, send):
        self.asgi.append(dict(scope))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]})
        await send({"type": "http.response.body", "body": ANSWER if scope["method"] != "HEAD" else b""})


def server(tmp_path, **settings):
    """(connect, proxy, server_state): `connect(peer)` opens one client connection to a gateway whose
    proxy is a FakeProxy."""
    gateway = create_app(GatewaySettings(data_dir=str(tmp_path), internal_secret="s" * 32, **settings))
    proxy = FakeProxy()
    gateway.proxy = proxy
    config = Config(app=gateway, http=GatewayHttpProtocol, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    state.default_headers = [(b"server", b"vmc-test")]

    def connect(peer: str = "127.0.0.1"):
        protocol = GatewayHttpProtocol(config=config, server_state=state, app_state={})
        transport = Transport(peer)
        protocol.connection_made(transport)
        return protocol, transport

    return connect, proxy, state


@pytest.fixture
def connection(tmp_path):
    return server(tmp_path)


async def until(condition, timeout: float = 5.0) -> None:
    """Let the loop run until `condition()` holds, or fail after `timeout` seconds (polled every
    millisecond: the fake transport answers within a few loop turns)."""
    await eventually(condition, timeout=timeout, interval=0.001)


async def settle(state: ServerState) -> None:
    for _ in range(50):
        await asyncio.sleep(0)
        if not state.tasks:
            await asyncio.sleep(0)
            return
    await asyncio.wait_for(asyncio.gather(*state.tasks), 2)


async def test_a_proxied_request_reaches_answer_with_uvicorns_scope_and_leaves_in_one_write(connection):
    connect, proxy, state = connection
    protocol, transport = connect()
    protocol.data_received(b"GET /api/v1/organizations/a%2Fb?limit=5 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer k\r\n\r\n")
    await settle(state)
    assert len(proxy.fast) == 1 and not proxy.asgi
    scope, body = proxy.fast[0]
    assert (scope["method"], scope["path"], scope["raw_path"], scope["query_string"]) == (
        "GET", "/api/v1/organizations/a/b", b"/api/v1/organizations/a%2Fb", b"limit=5")
    assert (b"authorization", b"Bearer k") in scope["headers"] and scope["client"] == ("127.0.0.1", 50000)
    assert body == b""
    assert len(transport.writes) == 1  # head and body together
    head, _, payload = transport.output.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"server: vmc-test" in head and b"content-length: 11" in head
    assert payload == ANSWER
    assert not transport.closed  # kept alive for the next request


async def test_keep_alive_serves_the_next_request_on_the_same_connection(connection):
    connect, proxy, state = connection
    protocol, transport = connect()
    for n in range(3):
        protocol.data_received(f"GET /api/v1/programs/{n} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        await settle(state)
    assert [scope["path"] for scope, _ in proxy.fast] == [f"/api/v1/programs/{n}" for n in range(3)]
    assert transport.output.count(b"HTTP/1.1 200 OK") == 3 and not transport.closed


async def test_a_body_sent_in_pieces_reaches_the_proxy_whole(connection):
    connect, proxy, state = connection
    protocol, transport = connect()
    body = b'{"name": "' + b"x" * 5000 + b'"}'
    protocol.data_received(b"POST /api/v1/volunteers HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:100])
    await asyncio.sleep(0)  # one loop turn, not a wait: the answering task starts and waits for the rest
    protocol.data_received(body[100:])
    await settle(state)
    assert proxy.fast[0][1] == body and proxy.fast[0][0]["method"] == "POST"
    assert transport.output.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("request_line, headers", [
    (b"HEAD /api/v1/organizations HTTP/1.1", b"Host: gw\r\n"),  # HEAD answers carry no body: uvicorn's rules
    (b"GET /health HTTP/1.1", b"Host: gw\r\n"),  # not proxied: the FastAPI app
    (b"GET /api/v1/openapi.json HTTP/1.1", b"Host: gw\r\n"),
    (b"GET /api/v1/admin/api-keys HTTP/1.1", b"Host: gw\r\n"),
])
async def test_what_the_fast_path_does_not_take_goes_to_the_asgi_app(connection, request_line, headers):
    connect, proxy, state = connection
    protocol, transport = connect()
    protocol.data_received(request_line + b"\r\n" + headers + b"\r\n")
    await settle(state)
    assert not proxy.fast
    assert transport.output.startswith(b"HTTP/1.1 "), transport.output[:100]
    if request_line.startswith(b"HEAD"):
        assert [scope["method"] for scope in proxy.asgi] == ["HEAD"]
        assert transport.output.endswith(b"\r\n\r\n")  # no body


async def test_http_1_0_and_connection_close_are_answered_then_closed(connection):
    connect, proxy, state = connection
    protocol, transport = connect()
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    await settle(state)
    assert proxy.fast and b"connection: close" in transport.output and transport.closed
    protocol, transport = connect()
    protocol.data_received(b"GET /api/v1/programs HTTP/1.0\r\n\r\n")
    await settle(state)
    assert len(proxy.asgi) == 1 and transport.output.endswith(ANSWER) and transport.closed


async def test_pipelined_requests_are_answered_in_order(connection):
    connect, proxy, state = connection
    protocol, transport = connect()
    proxy.hold = asyncio.Event()  # the first answer is still being worked on when the second arrives
    protocol.data_received(b"GET /api/v1/programs/1 HTTP/1.1\r\nHost: gw\r\n\r\n"
                           b"GET /api/v1/programs/2 HTTP/1.1\r\nHost: gw\r\n\r\n")
    await until(lambda: proxy.fast)  # the first is being answered, the second queued behind it
    assert transport.output == b"" and len(protocol.pipeline) == 1
    proxy.hold.set()
    await settle(state)
    await settle(state)
    assert [scope["path"] for scope, _ in proxy.fast] == ["/api/v1/programs/1"]
    assert [scope["path"] for scope in proxy.asgi] == ["/api/v1/programs/2"]  # queued by uvicorn, then ASGI
    assert transport.output.count(b"HTTP/1.1 200 OK") == 2


async def test_a_trusted_proxys_forwarded_address_is_the_client(connection):
    connect, proxy, state = connection
    protocol, _ = connect()  # 127.0.0.1: trusted by default (uvicorn's --forwarded-allow-ips)
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
    await settle(state)
    assert proxy.fast[0][0]["client"][0] == "203.0.113.9"
    protocol, _ = connect(peer="192.0.2.50")  # anyone else cannot claim an address
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
    await settle(state)
    assert proxy.fast[1][0]["client"][0] == "192.0.2.50"


async def test_a_client_gone_before_the_answer_gets_no_write(connection):
    connect, proxy, state = connection
    protocol, transport = connect()
    proxy.hold = asyncio.Event()
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\n\r\n")
    await until(lambda: proxy.fast)  # the answer is under way when the client leaves
    protocol.connection_lost(None)
    proxy.hold.set()
    await settle(state)
    assert transport.writes == []


async def test_cross_origin_requests_take_the_cors_route_when_cors_is_configured(tmp_path):
    connect, proxy, state = server(tmp_path, cors_origins="https://dash.example")
    protocol, transport = connect()
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\nOrigin: https://dash.example\r\n\r\n")
    await settle(state)
    assert not proxy.fast and len(proxy.asgi) == 1
    assert b"access-control-allow-origin: https://dash.example" in transport.output


async def test_a_head_trickled_too_slowly_is_a_408_and_the_connection_closes(tmp_path):
    connect, proxy, state = server(tmp_path, header_read_timeout_seconds=0.05)
    protocol, transport = connect()
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\n")  # the head never ends
    await until(lambda: transport.output.startswith(b"HTTP/1.1 408 "), timeout=2)
    assert b"application/problem+json" in transport.output
    assert transport.closed and not proxy.fast


async def test_a_head_over_the_limit_is_refused_once_its_pieces_add_up_before_it_ends(connection):
    """The limit is on the head's running total, not on each read: two reads under the limit that
    together pass it get the 431 at once, without waiting for the head's end."""
    connect, proxy, state = connection
    protocol, transport = connect()
    head = b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\nX-Padding: " + b"a" * 70_000 + b"\r\n\r\n"
    first, second = head[:40_000], head[40_000:-1_000]  # the head's last kilobyte never comes
    assert len(first) < protocol.max_head_bytes < len(first) + len(second) and len(second) < protocol.max_head_bytes
    protocol.data_received(first)
    assert transport.output == b"" and not transport.closed
    protocol.data_received(second)
    assert transport.output.startswith(b"HTTP/1.1 431 ") and b"application/problem+json" in transport.output
    assert transport.closed and not proxy.fast and not proxy.asgi


async def test_a_head_completed_in_time_is_served_and_leaves_no_timer(tmp_path):
    connect, proxy, state = server(tmp_path, header_read_timeout_seconds=0.05)
    protocol, transport = connect()
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\n")
    assert protocol.head_timer is not None  # a head spanning reads is timed
    protocol.data_received(b"Host: gw\r\n\r\n")
    await settle(state)
    # A negative wait, so a sleep: nothing to wait for but the time limit passing without a 408.
    await asyncio.sleep(0.1)
    assert transport.output.startswith(b"HTTP/1.1 200 OK") and b"408" not in transport.output
    assert not transport.closed and len(proxy.fast) == 1



@pytest.fixture
async def serving(connection):
    """(protocol, transport, proxy, state): one connection to a gateway whose proxy's `serve` takes requests."""
    connect, proxy, state = connection
    proxy.serving = True
    return *connect(), proxy, state

async def test_a_request_with_its_whole_body_is_served_from_callbacks_without_a_task(serving):
    protocol, transport, proxy, state = serving
    body = b'{"name_latin": "A"}'
    protocol.data_received(b"POST /api/v1/volunteers HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert not state.tasks and not proxy.fast and len(proxy.served) == 1
    scope, reply = proxy.served[0]
    assert scope["vmc.body"] == body and scope["path"] == "/api/v1/volunteers" and scope["method"] == "POST"
    assert transport.output == b""  # nothing until the proxy replies
    reply(201, [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())], ANSWER)
    assert len(transport.writes) == 1 and transport.output.startswith(b"HTTP/1.1 201 Created\r\n")
    assert transport.output.endswith(b"\r\n\r\n" + ANSWER) and not transport.closed
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\n\r\n")  # keep-alive: the next one
    assert len(proxy.served) == 2


async def test_a_body_still_coming_goes_to_answer_not_to_serve(serving):
    protocol, transport, proxy, state = serving
    protocol.data_received(b"POST /api/v1/volunteers HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 10\r\n\r\n{\"a\":")
    protocol.data_received(b' 1}  ')
    await settle(state)
    assert not proxy.served and proxy.fast[0][1] == b'{"a": 1}  '
    assert transport.output.startswith(b"HTTP/1.1 200 OK")


async def test_a_request_pipelined_behind_a_served_one_waits_for_its_reply(serving):
    protocol, transport, proxy, state = serving
    protocol.data_received(b"GET /api/v1/programs/1 HTTP/1.1\r\nHost: gw\r\n\r\n"
                           b"GET /api/v1/programs/2 HTTP/1.1\r\nHost: gw\r\n\r\n")
    await settle(state)
    assert [scope["path"] for scope, _ in proxy.served] == ["/api/v1/programs/1"] and not proxy.asgi
    assert transport.output == b""
    proxy.served[0][1](200, [(b"content-length", b"3")], b"one")
    await settle(state)
    assert [scope["path"] for scope in proxy.asgi] == ["/api/v1/programs/2"]  # queued by uvicorn, then ASGI
    assert transport.output.startswith(b"HTTP/1.1 200 OK") and transport.output.index(b"one") < transport.output.index(ANSWER)


async def test_a_served_request_whose_client_left_gets_no_write(serving):
    protocol, transport, proxy, state = serving
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\n\r\n")
    protocol.connection_lost(None)
    proxy.served[0][1](200, [(b"content-length", b"3")], b"one")
    assert transport.writes == []


async def test_a_served_request_with_connection_close_is_answered_then_closed(serving):
    protocol, transport, proxy, state = serving
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    proxy.served[0][1](200, [(b"content-length", b"3")], b"one")
    assert b"connection: close" in transport.output and transport.output.endswith(b"one") and transport.closed


async def test_a_bug_in_serve_before_admission_leaves_the_request_to_answer(serving):
    protocol, transport, proxy, state = serving

    def broken(scope, reply):
        raise KeyError("a check that broke")

    proxy.serve = broken
    protocol.data_received(b"GET /api/v1/programs HTTP/1.1\r\nHost: gw\r\n\r\n")
    await settle(state)
    assert len(proxy.fast) == 1 and transport.output.startswith(b"HTTP/1.1 200 OK") and not transport.closed


async def test_the_headers_the_proxy_reads_are_each_requests_own_first_values(serving):
    protocol, transport, proxy, state = serving
    protocol.data_received(b"GET /api/v1/programs/1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer one\r\n"
                           b"AUTHORIZATION: Bearer two\r\nX-Request-Id: r1\r\n\r\n"
                           b"GET /api/v1/programs/2 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer three\r\n\r\n")
    scope = proxy.served[0][0]
    assert header(scope, b"authorization") == "Bearer one"  # as a scan of the header list finds it
    assert header(scope, b"authorization") == header({"headers": scope["headers"]}, b"authorization")
    assert header(scope, b"x-request-id") == "r1" and header(scope, b"content-type") is None
    proxy.served[0][1](200, [(b"content-length", b"3")], b"one")
    await settle(state)
    assert header(proxy.asgi[0], b"authorization") == "Bearer three"


def gets(paths) -> bytes:
    return b"".join(f"GET /api/v1/programs/{p} HTTP/1.1\r\nHost: gw\r\n\r\n".encode() for p in paths)


async def test_a_client_pipelining_more_than_the_cap_is_not_read_until_answers_drain(connection):
    """One read of 400 pipelined requests: no more than a slice's worth past the cap is parsed and
    the connection is not read; as answers leave, the rest is parsed; all are answered, in order."""
    connect, proxy, state = connection
    protocol, transport = connect()
    proxy.hold = asyncio.Event()
    data = gets(range(400))
    per_request = len(data) // 400
    protocol.data_received(data)
    await until(lambda: len(proxy.fast) == 1)  # the first is being answered, the others wait
    assert not transport.reading and protocol.held
    assert MAX_PIPELINED <= len(protocol.pipeline) <= MAX_PIPELINED + FEED_SLICE // per_request + 1
    proxy.hold.set()
    await until(lambda: transport.output.count(b"HTTP/1.1 200 OK") == 400)
    answered = [scope["path"] for scope, _ in proxy.fast] + [scope["path"] for scope in proxy.asgi]
    assert answered == [f"/api/v1/programs/{n}" for n in range(400)]
    assert transport.reading and not protocol.held and not transport.closed


async def test_backed_up_writes_stop_the_reading_and_the_next_answers(connection):
    """The client does not read (the transport's buffer is over its high-water mark): nothing is
    read and no answer is produced until the buffer drains."""
    connect, proxy, state = connection
    protocol, transport = connect()
    protocol.pause_writing()
    assert not transport.reading
    protocol.data_received(gets(range(3)))
    await until(lambda: len(proxy.fast) == 1)  # the first is answered, its write waits
    assert transport.output == b"" and not transport.reading and not proxy.asgi
    protocol.resume_writing()
    await until(lambda: transport.output.count(b"HTTP/1.1 200 OK") == 3)
    assert transport.reading


async def test_a_408_waits_for_the_answer_due_before_it(tmp_path):
    connect, proxy, state = server(tmp_path, header_read_timeout_seconds=0.05)
    protocol, transport = connect()
    proxy.hold = asyncio.Event()
    protocol.data_received(gets([1]) + b"GET /api/v1/programs/2 HTTP/1.1\r\n")  # the second head never ends
    await until(lambda: protocol.refusal is not None)
    assert transport.output == b"" and not transport.closed
    proxy.hold.set()
    await until(lambda: transport.closed)
    first, _, rest = transport.output.partition(ANSWER)
    assert first.startswith(b"HTTP/1.1 200 OK") and rest.startswith(b"HTTP/1.1 408 ")


async def test_a_half_closed_client_is_answered_then_closed(connection):
    connect, proxy, state = connection
    protocol, transport = connect()
    proxy.hold = asyncio.Event()
    protocol.data_received(gets([1, 2]))
    assert protocol.eof_received() is True  # kept open for the answers due
    proxy.hold.set()
    await until(lambda: transport.closed)
    assert transport.output.count(b"HTTP/1.1 200 OK") == 2
    protocol, transport = connect()
    protocol.data_received(b"GET /api/v1/programs/3 HTTP/1.1\r\nHo")
    assert protocol.eof_received() is False  # a request that will never be whole: closed at once


def test_uvicorn_and_httptools_are_the_versions_the_protocol_was_written_against():
    """gateway/server.py overrides uvicorn's protocol callbacks and calls its private methods: an
    upgrade must go through re-reading uvicorn's httptools_impl.py, which starts by changing the pins."""
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = {}
    for requirement in project["project"]["dependencies"]:
        found = re.fullmatch(r"(uvicorn|httptools)(\[[a-z,]+\])?==([0-9.]+)", requirement.replace(" ", ""))
        if found:
            pins[found[1]] = found[3]
    assert pins == {"uvicorn": version("uvicorn"), "httptools": version("httptools")}
