"""One client, one request at a time, taking turns between the ways in: the added latency at one client.

Rounds of wrk (bench.load) put each way in on the machine at a different moment, and at one client
a registration's own latency moves by ±1 ms from one 4-second round to the next (the registry's
CPU per registration, the outbox relay, the broker and the analytics projection all share two
cores with the gateway). Against that, a difference of 0.3 ms between two medians of 9 rounds is
noise. Here each request goes to the next way in, in turn (direct, gateway, ..., then the same
ways in reverse order), so every way meets the same moments of the machine, and the medians of
thousands of requests each are compared.

The client is a blocking socket per way in (TCP_NODELAY, keep-alive), timing each request from the
first byte sent to the last byte of the answer read: the same small cost on every way in, so it
cancels in the differences. `python -m bench.interleave` is not a command of its own: `bench
gateway_overhead` runs it for its one-client rows.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.stats import percentile


@dataclass
class Way:
    """One way in: where requests go and the headers it needs (the gateway's key, or the signed context)."""

    name: str
    url: str  # the full URL of the route
    headers: dict[str, str]


class _Client:
    """HTTP/1.1 on one kept-alive blocking socket; answers must carry Content-Length (all of ours do)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:")), None)
        if length is None:
            raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()


def request_bytes(method: str, url: str, headers: dict[str, str], body: bytes | None) -> bytes:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


WARMUP = 50  # requests per way in before the measured ones


def turns(ways: Sequence[Way], method: str, body_template: str | None, requests: int, first: int,
          expect: int | None = None, warmup: int = WARMUP) -> dict[str, list[float]]:
    """Milliseconds of each request, by way in: `requests` per way, in turns (forwards, then backwards).
    `{n}` in the body template is a per-request number (8 digits, unique from `first`)."""
    clients = {way.name: _Client(way.url) for way in ways}
    latencies: dict[str, list[float]] = {way.name: [] for way in ways}
    n = first
    try:
        for turn in range(warmup + requests):
            for way in (ways if turn % 2 == 0 else ways[::-1]):
                n += 1
                body = body_template.replace("{n}", f"{n:08d}").encode() if body_template is not None else None
                request = request_bytes(method, way.url, way.headers, body)
                began = time.perf_counter()
                status, answer = clients[way.name].exchange(request)
                elapsed = time.perf_counter() - began
                if (status != expect) if expect is not None else status >= 400:
                    raise RuntimeError(f"{method} {way.url} ({way.name}): {status} {answer[:300]!r}")
                if turn >= warmup:
                    latencies[way.name].append(elapsed * 1000)
    finally:
        for client in clients.values():
            client.close()
    return latencies


def added(latencies: dict[str, list[float]], base: str = "direct") -> dict[str, tuple[float, float]]:
    """Way in → (p50, p50 minus the base's p50), in milliseconds."""
    base_p50 = percentile(latencies[base], 50)
    return {name: (percentile(values, 50), percentile(values, 50) - base_p50) for name, values in latencies.items()}
