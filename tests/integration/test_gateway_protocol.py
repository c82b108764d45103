"""The gateway's own HTTP protocol (gateway/server.py) in the running stack, over raw sockets: what
ordinary clients never do (pipelining, HTTP/1.0, bodies written apart from their heads, Expect:
100-continue) and the client address a trusted proxy forwards."""
from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlsplit

from services.registry.settings import GDY_ORGANIZATION_ID
from tests.harness import Stack


async def connect(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(stack.api)
    return await asyncio.open_connection(url.hostname, url.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10) if status >= 200 else b""
    return status, headers, body


def get(path: str, key: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET /api/v1{path} HTTP/{version}", "Host: gateway", f"Authorization: Bearer {key}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_pipelined_requests_are_answered_in_order(stack: Stack):
    reader, writer = await connect(stack)
    missing = uuid.uuid4()
    writer.write(get(f"/organizations/{GDY_ORGANIZATION_ID}", stack.admin_key)
                 + get(f"/organizations/{missing}", stack.admin_key)
                 + get("/organizations?limit=1", stack.admin_key))
    answers = [await read_response(reader) for _ in range(3)]
    writer.close()
    assert [status for status, _, _ in answers] == [200, 404, 200]
    assert json.loads(answers[0][2])["id"] == GDY_ORGANIZATION_ID
    assert answers[1][1]["content-type"] == "application/problem+json"
    assert len(json.loads(answers[2][2])["items"]) == 1
    assert len({headers["x-request-id"] for _, headers, _ in answers}) == 3


async def test_an_http_1_0_client_gets_its_answer_and_the_connection_closes(stack: Stack):
    reader, writer = await connect(stack)
    writer.write(get(f"/organizations/{GDY_ORGANIZATION_ID}", stack.admin_key, version="1.0"))
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["id"] == GDY_ORGANIZATION_ID
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the gateway
    writer.close()


async def test_connection_close_is_honoured_after_the_answer(stack: Stack):
    reader, writer = await connect(stack)
    writer.write(get(f"/organizations/{GDY_ORGANIZATION_ID}", stack.admin_key, "Connection: close"))
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers.get("connection") == "close"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_a_connection_that_never_sends_a_byte_is_closed_after_the_keep_alive_time(stack: Stack):
    """uvicorn's default 5 s, as for an idle kept-alive connection: silent connections cannot pile up."""
    reader, writer = await connect(stack)
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 15) == b""
    assert 4 <= asyncio.get_running_loop().time() - started < 10
    writer.close()


async def test_a_request_the_parser_cannot_read_is_a_400_problem_and_the_connection_closes(stack: Stack):
    """A control character in a header value (here a NUL in the request id, which would otherwise
    travel to the services, the events and the audit trail) or a malformed request line."""
    for request in (get("/organizations?limit=1", stack.admin_key, "X-Request-ID: a\x00b"),
                    get("/organizations?limit=1", stack.admin_key, "X-Request-ID: a\x01b"),
                    b"GET /api/v1/organizations HTTP/1.1 extra\r\nHost: gateway\r\n\r\n"):
        reader, writer = await connect(stack)
        writer.write(request)
        status, headers, body = await read_response(reader)
        assert status == 400 and headers["content-type"] == "application/problem+json", (request, status, body)
        assert json.loads(body)["status"] == 400 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_a_head_over_64_kib_is_a_431_even_before_it_ends(stack: Stack):
    """How the socket splits the head into reads is up to TCP: tests/unit/test_gateway_server.py
    drives the protocol read by read (two reads under the limit that add up past it)."""
    big = "X-Padding: " + "a" * 70_000
    reader, writer = await connect(stack)
    writer.write(get("/organizations?limit=1", stack.admin_key, big))
    status, headers, body = await read_response(reader)
    assert status == 431 and headers["content-type"] == "application/problem+json" and headers["connection"] == "close"
    assert json.loads(body)["status"] == 431
    writer.close()
    # A head whose end never comes: refused once the bytes so far pass the limit, not left waiting.
    reader, writer = await connect(stack)
    writer.write(get("/organizations?limit=1", stack.admin_key, big)[:-1_000])
    status, _, _ = await read_response(reader)
    assert status == 431
    writer.close()
    # Just under the limit, and a small head with a large body in the same write: answered as usual.
    reader, writer = await connect(stack)
    writer.write(get("/organizations?limit=1", stack.admin_key, "X-Padding: " + "a" * 60_000))
    assert (await read_response(reader))[0] == 200
    body = json.dumps({"name": "x" * 500_000}).encode()
    writer.write(post_head("/organizations", stack.admin_key, len(body)) + body)
    status, _, answer = await read_response(reader)
    assert status == 422 and b"kind" in answer  # the body was read and validated: it lacks "kind"
    writer.close()


def post_head(path: str, key: str, length: int, *extra: str) -> bytes:
    lines = [f"POST /api/v1{path} HTTP/1.1", "Host: gateway", f"Authorization: Bearer {key}",
             "Content-Type: application/json", f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_body_written_after_its_head_in_several_writes_is_forwarded_whole(stack: Stack):
    """Whether the gateway reads the writes apart is up to TCP: tests/unit/test_gateway_server.py
    drives a body arriving in pieces read by read; the Expect: 100-continue test below sends a body
    after the gateway has read the head alone."""
    name = f"Trickle NGO {uuid.uuid4().hex[:8]}"
    body = json.dumps({"name": name, "kind": "ngo", "province_codes": ["12"]}).encode()
    reader, writer = await connect(stack)
    writer.write(post_head("/organizations", stack.admin_key, len(body)))
    for piece in (body[:5], body[5:20], body[20:]):
        await writer.drain()
        writer.write(piece)
    status, _, answer = await read_response(reader)
    writer.close()
    assert status == 201, answer
    assert json.loads(answer)["name"] == name


async def test_expect_100_continue_gets_its_interim_answer_then_the_real_one(stack: Stack):
    name = f"Continue NGO {uuid.uuid4().hex[:8]}"
    body = json.dumps({"name": name, "kind": "ngo", "province_codes": ["12"]}).encode()
    reader, writer = await connect(stack)
    writer.write(post_head("/organizations", stack.admin_key, len(body), "Expect: 100-continue"))
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100 ")
    writer.write(body)
    status, _, answer = await read_response(reader)
    writer.close()
    assert status == 201 and json.loads(answer)["name"] == name


async def test_a_trusted_proxys_forwarded_address_is_throttled_on_its_own(stack: Stack):
    """Behind a load balancer (a trusted proxy: 127.0.0.1 here, uvicorn's default), wrong keys are
    counted per forwarded client address, so one guesser does not get every client throttled."""
    guesser, bystander = "198.51.100.7", "198.51.100.8"
    reader, writer = await connect(stack)
    statuses = []
    for _ in range(200):
        writer.write(get("/organizations", f"vmc_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}", f"X-Forwarded-For: {guesser}"))
        statuses.append((await read_response(reader))[0])
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}
    writer.write(get("/organizations", stack.admin_key, f"X-Forwarded-For: {guesser}"))
    assert (await read_response(reader))[0] == 429  # even a right key, from the throttled address
    writer.write(get("/organizations", f"vmc_{uuid.uuid4().hex[:8]}_x", f"X-Forwarded-For: {bystander}"))
    assert (await read_response(reader))[0] == 401  # another client behind the same proxy: not throttled
    writer.write(get("/organizations", stack.admin_key, f"X-Forwarded-For: {bystander}"))
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_a_service_keeps_an_idle_connection_longer_than_its_clients_do(stack: Stack):
    """Each service holds an idle kept-alive connection well past httpx's 5 s and the gateway pool's
    4 s: with uvicorn's default 5 s a request sent as the service closed the connection was lost
    ("server disconnected without sending a response"), as CI saw on a readiness probe."""
    url = urlsplit(stack.urls["registry"])
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    request = b"GET /health HTTP/1.1\r\nHost: registry\r\n\r\n"
    writer.write(request)
    assert (await read_response(reader))[0] == 200
    await asyncio.sleep(6)  # the idle time itself is what is tested
    writer.write(request)
    assert (await read_response(reader))[0] == 200
    writer.close()
