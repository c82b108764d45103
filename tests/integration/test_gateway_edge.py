"""The gateway's connection edge over raw sockets: what one client can make it hold (pipelining
without reading), answers in request order whatever is refused, half-closed clients, early refusals of
a body still to come, hop-by-hop headers; and the upstream side's retries and circuit breakers."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from deploy.processes import free_port
from services.registry.settings import GDY_ORGANIZATION_ID
from tests.gateway_inprocess import TinyUpstream, running_gateway, settings_for
from tests.harness import Stack
from tests.integration.test_gateway_protocol import connect, get, post_head, read_response
from tests.integration.test_gateway_ratelimit import new_key


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def _until_idle(pid: int, deadline_s: float = 90.0) -> None:
    """Until the process has used no CPU for half a second: it has done all it will with what it read."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    last, still_since = _cpu_ticks(pid), loop.time()
    while loop.time() - still_since < 0.5:
        assert loop.time() < give_up, "the gateway never went idle"
        await asyncio.sleep(0.1)  # a polling interval: the condition is the CPU counter standing still
        now = _cpu_ticks(pid)
        if now != last:
            last, still_since = now, loop.time()


async def test_a_client_pipelining_without_reading_cannot_grow_the_gateway(stack: Stack, admin: httpx.AsyncClient):
    """20,000 pipelined GETs, no answer read: the gateway stops reading once a few are in flight and
    its writes back up, so its memory stays flat; then every answer arrives, in order."""
    key = await new_key(admin, rate_limit_per_minute=200)  # the rest are quick 429s, each in its place
    pid = stack.procs["gateway"].pid
    reader, writer = await connect(stack)
    writer.write(get("/organizations?limit=1", key))  # the connection and its buffers exist before measuring
    assert (await read_response(reader))[0] == 200
    await _until_idle(pid)
    before = _rss_kib(pid)
    total = 20_000
    requests = b"".join(get("/organizations?limit=1", key, f"X-Request-ID: flood-{i}") for i in range(total))
    writer.write(requests)
    sending = asyncio.create_task(writer.drain())
    await _until_idle(pid)
    grown_mib = (_rss_kib(pid) - before) / 1024
    assert grown_mib < 30, f"the gateway grew by {grown_mib:.0f} MiB for one client that does not read"
    statuses = set()
    for i in range(total):
        status, headers, _ = await read_response(reader)
        assert headers["x-request-id"] == f"flood-{i}", (i, status)
        statuses.add(status)
    await asyncio.wait_for(sending, 30)
    writer.close()
    assert statuses == {200, 429}


async def test_a_refusal_after_a_pipelined_request_comes_after_its_answer(stack: Stack):
    """A head too large (431) or unreadable (400) behind a request still being answered: that answer
    first, then the refusal and the close, so the client pairs each answer with its request."""
    for bad, status in ((get("/organizations?limit=1", stack.admin_key, "X-Padding: " + "a" * 70_000), 431),
                        (b"GET /api/v1/organizations HTTP/1.1 extra\r\nHost: gateway\r\n\r\n", 400)):
        reader, writer = await connect(stack)
        writer.write(get(f"/organizations/{GDY_ORGANIZATION_ID}", stack.admin_key, "X-Request-ID: first") + bad)
        first = await read_response(reader)
        assert (first[0], first[1].get("x-request-id")) == (200, "first"), first
        refused = await read_response(reader)
        assert refused[0] == status and refused[1]["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_a_request_refused_before_its_body_closes_the_connection(stack: Stack):
    """Expect: 100-continue, refused at the head (413: announced too large; 401: no key): the body
    was never asked for, so whether it follows is unknown; the answer says close and the gateway closes."""
    for extra, status in (((f"Authorization: Bearer {stack.admin_key}",), 413), ((), 401)):
        reader, writer = await connect(stack)
        length = 10_000_000 if status == 413 else 50
        lines = ["POST /api/v1/organizations HTTP/1.1", "Host: gateway", "Content-Type: application/json",
                 f"Content-Length: {length}", "Expect: 100-continue", *extra]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = await read_response(reader)
        assert answer[0] == status and answer[1].get("connection") == "close", answer
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert time.monotonic() - started < 2  # closed at once, not after the keep-alive time
        writer.close()


async def test_a_half_closed_client_gets_its_answers(stack: Stack):
    """FIN right after the requests (`shutdown(SHUT_WR)`): every answer still arrives, then the close."""
    reader, writer = await connect(stack)
    writer.write(get(f"/organizations/{GDY_ORGANIZATION_ID}", stack.admin_key) + get("/organizations?limit=1", stack.admin_key))
    writer.write_eof()
    first, second = await read_response(reader), await read_response(reader)
    assert first[0] == 200 and json.loads(first[2])["id"] == GDY_ORGANIZATION_ID
    assert second[0] == 200 and len(json.loads(second[2])["items"]) == 1
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_headers_named_in_connection_are_not_forwarded(stack: Stack):
    """RFC 9110 §7.6.1: a header the client names in Connection is for the gateway alone. Here an
    Idempotency-Key: forwarded, the second create (another body) would be a 409 from the registry."""
    idempotency = f"edge-{uuid.uuid4().hex}"
    created = []
    for _ in range(2):
        body = json.dumps({"name": f"Hop NGO {uuid.uuid4().hex[:8]}", "kind": "ngo", "province_codes": ["12"]}).encode()
        reader, writer = await connect(stack)
        writer.write(post_head("/organizations", stack.admin_key, len(body), f"Idempotency-Key: {idempotency}",
                               "Connection: keep-alive, Idempotency-Key") + body)
        status, _, answer = await read_response(reader)
        writer.close()
        assert status == 201, answer
        created.append(json.loads(answer)["id"])
    assert created[0] != created[1]


@pytest.mark.dialect_free
async def test_long_routes_timing_out_do_not_open_the_circuit_of_the_others(stack: Stack):
    """Imports (and batches, exports) that time out open their own circuit, not the one of the service's other routes."""
    port = free_port()
    async with TinyUpstream(port, hang=(b"/import",)) as upstream:
        settings = settings_for(stack, registry_url=f"http://127.0.0.1:{port}", import_timeout_seconds=0.2,
                                circuit_failure_threshold=2, circuit_cooldown_seconds=30)
        async with running_gateway(settings, stack.admin_key) as (_, client):
            for _ in range(2):
                slow = await client.post("/api/v1/volunteers/import", content=b"a,b\n", headers={"content-type": "text/csv"})
                assert slow.status_code == 504, slow.text
            refused = await client.post("/api/v1/volunteers/import", content=b"a,b\n", headers={"content-type": "text/csv"})
            assert refused.status_code == 503 and "circuit open" in refused.json()["detail"]
            ordinary = await client.get("/api/v1/organizations")
            assert ordinary.status_code == 200 and upstream.requests == 1
            assert (await client.get("/ready")).json()["circuits"]["registry"] == "closed"


@pytest.mark.dialect_free
async def test_a_refused_connection_is_tried_once_more_whatever_the_method(stack: Stack):
    """The one retry policy: a service refusing connections gets a GET twice (a moment apart), and a
    POST too (no byte of it was sent); both answer 503 at once after the second refusal."""
    port = free_port()  # nothing listens
    settings = settings_for(stack, activities_url=f"http://127.0.0.1:{port}", circuit_failure_threshold=100)
    async with running_gateway(settings, stack.admin_key) as (app, client):
        tries: list[str] = []
        upstream = app.proxy.upstream
        connect_once = upstream._connect

        async def counted(host, port_, timeout):
            tries.append("x")
            return await connect_once(host, port_, timeout)

        upstream._connect = counted
        read = await client.get("/api/v1/activity-types")
        assert read.status_code == 503 and len(tries) == 2
        write = await client.post("/api/v1/activity-types", json={})
        assert write.status_code == 503 and len(tries) == 4
