"""The gateway's upstream HTTP client against a real local asyncio HTTP server."""
from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import CONNECT_RETRY_DELAY, ConnectFailed, Dropped, Incomplete, ReadTimeout, UpstreamClient, retry_delay
from tests.conftest import eventually


class Server:
    """A tiny HTTP/1.1 server: each request is answered by `answer(path)`, which returns raw bytes
    (or None to close the connection without answering)."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split(" ")[1]
                length = next((int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")), 0)
                body = await reader.readexactly(length)
                answer = await self.answer(path, body)
                if answer is None:
                    writer.close()
                    return
                writer.write(answer)
                await writer.drain()
                if path.startswith("/close"):  # the answer as written, then the connection ends
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def fixed(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(body)).encode() + b"\r\nx-test: yes\r\n" + extra + b"\r\n" + body


async def echo(path: str, body: bytes) -> bytes:
    return fixed(path.encode() + b"|" + body)


async def call(client, server, method="GET", target="/a", body=b"", timeout=2.0):
    return await client.request(method, "127.0.0.1", server.port, target, [(b"x-one", b"1")], body,
                                timeout=timeout, connect_timeout=1.0)


async def test_content_length_answer_and_keep_alive_reuse():
    client = UpstreamClient()
    async with Server(echo) as server:
        first = await call(client, server, "POST", "/a?b=%2F", b"hello")
        second = await call(client, server, "GET", "/c")
        assert (first.status, first.body) == (200, b"/a?b=%2F|hello")
        assert (b"x-test", b"yes") in first.headers
        assert second.body == b"/c|"
        assert server.connections == 1
    await client.close()


async def test_chunked_answer():
    async def chunked(path, body):
        return b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

    client = UpstreamClient()
    async with Server(chunked) as server:
        response = await call(client, server)
        again = await call(client, server)
        assert (response.status, response.body, again.body) == (201, b"hello world", b"hello world")
        assert server.connections == 1
    await client.close()


async def test_connection_close_is_honoured():
    async def closing(path, body):
        return fixed(b"bye", b"connection: close\r\n")

    client = UpstreamClient()
    async with Server(closing) as server:
        assert (await call(client, server)).body == b"bye"
        assert (await call(client, server)).body == b"bye"
        assert server.connections == 2
    await client.close()


async def test_the_client_tries_once_and_says_a_dropped_connection_dropped():
    """Retries are the caller's (`retry_delay`): the client reports a kept-alive connection the
    server closed as Dropped, whatever the method, and a fresh try (`reuse=False`) connects anew."""
    served = []

    async def close_idle_once(path, body):
        served.append(path)
        return None if len(served) == 2 else fixed(path.encode())

    client = UpstreamClient()
    async with Server(close_idle_once) as server:
        await call(client, server, target="/one")
        with pytest.raises(Dropped):
            await call(client, server, target="/two")
        assert server.connections == 1
        answer = await client.request("GET", "127.0.0.1", server.port, "/three", [], timeout=2.0, connect_timeout=1.0, reuse=False)
        assert answer.body == b"/three" and server.connections == 2
    await client.close()


@pytest.mark.parametrize(("method", "error", "attempt", "delay"), [
    ("GET", Dropped("x"), 0, 0.0),                   # a kept-alive connection closed: at once, fresh
    ("PUT", ConnectFailed("x"), 0, CONNECT_RETRY_DELAY),  # refused: a moment later
    ("GET", Dropped("x"), 1, None),                  # two tries at most
    ("POST", Dropped("x"), 0, None),                 # the service may have acted on a POST it read
    ("POST", ConnectFailed("x"), 0, CONNECT_RETRY_DELAY),  # never sent: safe whatever the method
    ("POST", ConnectFailed("x"), 1, None),
    ("GET", ReadTimeout("x"), 0, None),              # the work may be under way
    ("GET", Incomplete("x"), 0, None),
    ("GET", OSError("x"), 0, None),
])
def test_the_retry_policy(method, error, attempt, delay):
    assert retry_delay(method, error, attempt) == delay


async def test_refused_connection():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(ConnectFailed):
        await UpstreamClient().request("GET", "127.0.0.1", port, "/", [], timeout=1.0, connect_timeout=0.5)


async def test_read_timeout_and_cut_off_answer():
    async def slow(path, body):
        await asyncio.sleep(5)  # the upstream's behaviour, not a wait: it outlasts the 0.2 s read timeout
        return fixed(b"late")

    client = UpstreamClient()
    async with Server(slow) as server:
        with pytest.raises(ReadTimeout):
            await call(client, server, target="/slow", timeout=0.2)

    async def cut(path, body):
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort"

    async with Server(cut) as server:
        with pytest.raises(Incomplete):
            await call(client, server, target="/close-mid-answer", timeout=5)
    await client.close()


async def test_the_pool_never_opens_more_than_its_limit_and_waiters_get_the_freed_connection():
    client = UpstreamClient(limit=2)

    async def slow(path: str, body: bytes) -> bytes:
        await asyncio.sleep(0.05)  # a slow upstream, not a wait: the six calls overlap and contend for two slots
        return fixed(path.encode())

    async with Server(slow) as server:
        answers = await asyncio.gather(*(call(client, server, target=f"/{n}") for n in range(6)))
        assert sorted(answer.body for answer in answers) == [f"/{n}".encode() for n in range(6)]
        assert server.connections == 2
        pool = client.pools[("127.0.0.1", server.port)]
        assert pool.busy == 0 and len(pool.idle) == 2 and not pool.waiters
        # A caller that will not wait: an idle connection with its slot, until the pool is full.
        taken = [client.take_idle("127.0.0.1", server.port) for _ in range(3)]
        assert taken[0] is not None and taken[1] is not None and taken[2] is None and pool.busy == 2
        for conn in taken[:2]:
            client.put_back("127.0.0.1", server.port, conn, used=False)
        assert pool.busy == 0 and len(pool.idle) == 2


async def test_a_caller_cancelled_while_waiting_for_a_slot_gives_nothing_away():
    client = UpstreamClient(limit=1)
    release = asyncio.Event()

    async def held(path: str, body: bytes) -> bytes:
        await release.wait()  # the first caller keeps the only slot until the second is cancelled
        return fixed(b"ok")

    async with Server(held) as server:
        first = asyncio.create_task(call(client, server))
        await eventually(lambda: ("127.0.0.1", server.port) in client.pools
                         and client.pools[("127.0.0.1", server.port)].busy == 1, timeout=5, interval=0.001)
        pool = client.pools[("127.0.0.1", server.port)]
        second = asyncio.create_task(call(client, server))
        await eventually(lambda: len(pool.waiters) == 1, timeout=5, interval=0.001)
        second.cancel()
        release.set()
        assert (await first).body == b"ok"
        with pytest.raises(asyncio.CancelledError):
            await second
        assert pool.busy == 0 and not pool.waiters
        assert (await call(client, server)).body == b"ok"


async def test_each_request_on_a_kept_alive_connection_has_its_own_time_limit():
    """One timer per connection: a later, shorter limit still applies, and a limit armed for an
    earlier request does not cut off a later, longer one."""
    async def slow(path: str, body: bytes) -> bytes:
        await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        return fixed(b"ok")

    client = UpstreamClient()
    async with Server(slow) as server:
        assert (await call(client, server, target="/wait/0", timeout=30.0)).body == b"ok"  # arms the timer for 30 s
        began = asyncio.get_running_loop().time()
        with pytest.raises(ReadTimeout):
            await call(client, server, target="/wait/2", timeout=0.3)
        assert asyncio.get_running_loop().time() - began < 1.0
        assert (await call(client, server, target="/wait/0", timeout=0.2)).body == b"ok"  # arms it for 0.2 s
        assert (await call(client, server, target="/wait/0.5", timeout=5.0)).body == b"ok"  # outlives that timer
        assert server.connections == 2  # the timed-out connection was closed, the next one kept alive
    await client.close()
