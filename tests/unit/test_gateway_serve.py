"""`Proxy.serve`, the callback path, against a real key store and a real local HTTP server.

It must give exactly what `Proxy.answer` gives for the requests it takes, and take only those whose
needs are all in memory: everything else returns False having changed nothing (no rate-limit token
spent, no concurrency slot held), so that `answer` can take it whole.
"""
from __future__ import annotations

import asyncio

import pytest

from gateway.audit import COLUMNS, AuditWriter
from gateway.keys import ApiKeyCreate, KeyStore, create_key
from gateway.migrations import MIGRATIONS
from gateway.proxy import WHOLE_BODY, Proxy
from gateway.settings import GatewaySettings
from shared.db import make_engine, make_sessionmaker, migrate
from gateway.metrics import Metrics
from tests.unit.test_gateway_upstream import Server, fixed

ORG = "00000000-0000-4000-8000-000000000001"
SECRET = "s" * 32


class Recorder:
    """The `reply` callback: keeps what it was given; `wait()` until the answer came."""

    def __init__(self):
        self.answers: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self.event = asyncio.Event()

    def __call__(self, status, headers, body) -> None:
        self.answers.append((status, dict(headers), body))
        self.event.set()

    async def wait(self) -> tuple[int, dict[bytes, bytes], bytes]:
        await asyncio.wait_for(self.event.wait(), 3)
        assert len(self.answers) == 1, self.answers
        return self.answers[0]


class Audit(AuditWriter):
    def __init__(self):
        self.rows: list[dict] = []

    def record(self, row) -> None:
        self.rows.append(dict(zip(COLUMNS, row)))


def scope_of(method: str, path: str, key: str | None, body: bytes = b"", headers=()) -> dict:
    head = [(b"host", b"gw"), *headers]
    if key is not None:
        head.append((b"authorization", f"Bearer {key}".encode()))
    if body:
        head += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": head, "client": ("127.0.0.1", 50000), WHOLE_BODY: body}


@pytest.fixture
async def gateway(tmp_path):
    """(proxy, key, seen): a proxy whose registry is a local server; `seen` holds (path, body, headers)
    of what reached it. Paths starting /api/v1/volunteers/slow wait 0.5 s; .../drop closes without answering."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    await migrate(engine, MIGRATIONS)
    maker = make_sessionmaker(engine)
    async with maker() as session:
        _, key = await create_key(session, ApiKeyCreate(name="partner", organization_id=ORG, scopes=["registry:read"],
                                                        rate_limit_per_minute=3), SECRET)
        await session.commit()
    seen: list[tuple[str, bytes]] = []

    async def registry(path: str, body: bytes):
        seen.append((path, body))
        if "/slow" in path:
            await asyncio.sleep(0.5)  # the upstream's behaviour, not a wait: slower than the 0.2 s upstream timeout
        if "/drop" in path:
            return None
        return fixed(b'{"ok":true}', b"connection: keep-alive\r\n")

    async with Server(registry) as server:
        settings = GatewaySettings(data_dir=str(tmp_path), internal_secret=SECRET, upstream_timeout_seconds=0.2)
        proxy = Proxy(settings, KeyStore(maker, SECRET, ttl=60), {"registry": f"http://127.0.0.1:{server.port}",
                      "activities": "http://127.0.0.1:9", "analytics": "http://127.0.0.1:9"}, Metrics("gateway"))
        proxy.audit = Audit()
        await proxy.start()
        yield proxy, key, seen
        await proxy.close()
    await engine.dispose()


async def warm(proxy: Proxy, key: str) -> None:
    """One request through `answer`: the key is then cached and a kept-alive connection is idle."""
    status, _, _ = await proxy.answer(scope_of("GET", "/api/v1/programs", key), None)
    assert status == 200


async def test_a_cached_key_is_served_from_callbacks_like_answer_would(gateway):
    proxy, key, seen = gateway
    scope = scope_of("GET", "/api/v1/programs", key)
    assert proxy.serve(scope, Recorder()) is False  # not looked up yet: answer() must (it may wait on the database)
    assert not seen and proxy.limiter.hit_now("x", 1).allowed  # nothing sent, nothing else touched
    await warm(proxy, key)
    reply = Recorder()
    assert proxy.serve(scope_of("GET", "/api/v1/programs", key), reply) is True
    status, headers, body = await reply.wait()
    assert (status, body) == (200, b'{"ok":true}')
    assert headers[b"x-test"] == b"yes" and headers[b"content-length"] == b"11" and b"connection" not in headers
    assert headers[b"ratelimit-limit"] == b"3" and headers[b"ratelimit-remaining"] == b"1"  # the same bucket as answer()
    assert headers[b"x-request-id"]
    assert seen[-1][0] == "/api/v1/programs"
    assert proxy.concurrency._in_flight == {}  # the slot is given back


async def test_a_body_is_forwarded_whole_and_the_write_is_audited(gateway):
    proxy, key, seen = gateway
    await warm(proxy, key)
    reply = Recorder()
    assert proxy.serve(scope_of("POST", "/api/v1/volunteers", key, b'{"name_latin":"A"}'), reply)
    assert (await reply.wait())[0] == 200
    assert seen[-1] == ("/api/v1/volunteers", b'{"name_latin":"A"}')
    assert [(row["action"], row["status"]) for row in proxy.audit.rows] == [("volunteer.create", 200)]


async def test_refusals_before_the_rate_limit_are_left_to_answer(gateway):
    proxy, key, seen = gateway
    await warm(proxy, key)
    cases = [
        scope_of("GET", "/api/v1/programs", None),  # no key
        scope_of("GET", "/api/v1/programs", "vmc_nope_wrong"),  # a key not looked up
        scope_of("GET", "/api/v1/nothing-here", key),  # no such service
        scope_of("GET", "/api/v1/programs/../admin", key),  # dot segments
        scope_of("POST", "/api/v1/volunteers", key, b"x", headers=[(b"content-type", b"text/plain")]),  # 415
        scope_of("POST", "/api/v1/volunteers", key, b"x" * (2 * 1024 * 1024 + 1)),  # 413
    ]
    cases[4]["headers"] = [h for h in cases[4]["headers"] if h != (b"content-type", b"application/json")]
    cases.append({**scope_of("GET", "/api/v1/programs", key)})
    del cases[-1][WHOLE_BODY]  # body still coming
    before = len(seen)
    for scope in cases:
        assert proxy.serve(scope, Recorder()) is False, scope["path"]
    assert len(seen) == before
    reply = Recorder()
    assert proxy.serve(scope_of("GET", "/api/v1/programs", key), reply)  # the bucket was not touched: 2 of 3 left
    assert (await reply.wait())[1][b"ratelimit-remaining"] == b"1"


async def test_over_the_rate_limit_serve_answers_the_429_itself(gateway):
    proxy, key, seen = gateway
    await warm(proxy, key)
    statuses = []
    for _ in range(3):
        reply = Recorder()
        assert proxy.serve(scope_of("GET", "/api/v1/programs", key), reply)
        statuses.append((await reply.wait())[0])
    assert statuses == [200, 200, 429]
    assert len(seen) == 3  # the refused one never went upstream
    assert proxy.concurrency._in_flight == {}


async def test_a_throttled_address_or_a_revoked_key_goes_to_answer(gateway):
    proxy, key, _ = gateway
    await warm(proxy, key)
    proxy._auth_blocked["127.0.0.1"] = asyncio.get_running_loop().time() + 1e9
    assert proxy.serve(scope_of("GET", "/api/v1/programs", key), Recorder()) is False
    proxy._auth_blocked.clear()
    proxy.keys.invalidate()  # what a revocation through the admin routes does
    assert proxy.serve(scope_of("GET", "/api/v1/programs", key), Recorder()) is False


async def test_an_upstream_too_slow_is_a_504_and_one_that_drops_a_post_a_503(gateway):
    proxy, key, seen = gateway
    await warm(proxy, key)
    reply = Recorder()
    assert proxy.serve(scope_of("GET", "/api/v1/volunteers/slow", key), reply)
    status, headers, body = await reply.wait()
    assert status == 504 and headers[b"content-type"] == b"application/problem+json" and b"did not answer" in body
    reply = Recorder()  # the timed-out connection was closed: this one is forwarded from a task
    assert proxy.serve(scope_of("POST", "/api/v1/volunteers/drop", key, b"{}"), reply)
    assert (await reply.wait())[0] == 503
    assert [path for path, _ in seen].count("/api/v1/volunteers/drop") == 1  # not sent again: a POST is not idempotent
    assert proxy.concurrency._in_flight == {}


async def test_a_get_on_a_connection_the_service_closed_while_idle_is_sent_again(gateway):
    proxy, key, seen = gateway
    await warm(proxy, key)
    idle = proxy.upstream.pools[("127.0.0.1", int(proxy.upstreams["registry"].rsplit(":", 1)[1]))].idle
    assert len(idle) == 1
    idle[0].transport.close()  # the service closes it (keep-alive timeout): the gateway has not noticed yet
    idle[0].closed = False
    reply = Recorder()
    assert proxy.serve(scope_of("GET", "/api/v1/programs", key), reply)
    assert (await reply.wait())[0] == 200
    assert seen[-1][0] == "/api/v1/programs"


async def test_with_no_idle_connection_the_request_is_forwarded_from_a_task(gateway):
    proxy, key, seen = gateway
    await warm(proxy, key)
    replies = [Recorder(), Recorder()]
    assert all(proxy.serve(scope_of("GET", "/api/v1/programs", key), reply) for reply in replies)  # one idle connection
    assert [(await reply.wait())[0] for reply in replies] == [200, 200]
    assert proxy.concurrency._in_flight == {}
