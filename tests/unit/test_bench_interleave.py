"""bench.interleave: one client taking turns between ways in, against real local HTTP servers."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.interleave import Way, added, turns

ARRIVALS: list[tuple[str, str, bytes]] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the benchmarked servers

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ARRIVALS.append((self.server.name, self.headers.get("X-Way", ""), body))
        status = 422 if b"refuse" in body else 201
        answer = b'{"ok":true}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    ARRIVALS.clear()
    running = []
    for name in ("a", "b"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running.append(server)
    yield [f"http://127.0.0.1:{server.server_address[1]}/v" for server in running]
    for server in running:
        server.shutdown()
        server.server_close()


def test_each_request_goes_to_the_next_way_in_forwards_then_backwards(servers):
    ways = [Way("direct", servers[0], {"X-Way": "direct"}), Way("gateway", servers[1], {"X-Way": "gateway"})]
    latencies = turns(ways, "POST", '{"n": "{n}"}', requests=3, first=41, warmup=1)
    assert [way for _, way, _ in ARRIVALS] == ["direct", "gateway", "gateway", "direct"] * 2
    assert [server for server, _, _ in ARRIVALS] == ["a", "b", "b", "a"] * 2
    assert [body for _, _, body in ARRIVALS][:3] == [b'{"n": "00000042"}', b'{"n": "00000043"}', b'{"n": "00000044"}']
    assert {name: len(values) for name, values in latencies.items()} == {"direct": 3, "gateway": 3}  # warm-up dropped
    assert all(value > 0 for values in latencies.values() for value in values)


def test_an_unexpected_status_stops_the_run(servers):
    with pytest.raises(RuntimeError, match="422"):
        turns([Way("direct", servers[0], {})], "POST", '{"refuse": "{n}"}', requests=2, first=0, warmup=0)
    assert len(turns([Way("direct", servers[0], {})], "POST", '{"refuse": "{n}"}', requests=2, first=0, warmup=0,
                     expect=422)["direct"]) == 2


def test_added_is_the_difference_of_medians():
    assert added({"direct": [1.0, 2.0, 9.0], "gateway": [1.5, 2.25, 3.0]}) == {"direct": (2.0, 0.0), "gateway": (2.25, 0.25)}


def test_each_way_in_is_compared_with_the_direct_requests_of_its_own_pair():
    from bench.gateway_overhead import compare_interleaved
    from bench.stats import figure

    pairs = {
        "gateway": {"direct": [2.0, 2.0, 2.0], "gateway": [2.25, 2.25, 2.25]},
        "asgi": {"direct": [3.0, 3.0, 3.0], "asgi": [3.5, 3.5, 3.5]},
        "relay": {"direct": [1.0, 1.0, 1.0], "relay": [1.125, 1.125, 1.125]},
    }
    figures = compare_interleaved("write, 1 client", pairs)
    row = "write, 1 client"
    assert figures == {
        figure(row, "turns: direct p50 ms"): 2.0,
        figure(row, "turns: added p50 ms"): 0.25,
        figure(row, "turns: ASGI route added p50 ms"): 0.5,
        figure(row, "turns: byte relay added p50 ms"): 0.125,
    }


def test_nginx_is_reported_beside_the_other_ways_in_when_it_took_turns():
    from bench.gateway_overhead import compare_interleaved
    from bench.stats import figure

    pairs = {
        "gateway": {"direct": [2.0], "gateway": [2.25]},
        "asgi": {"direct": [3.0], "asgi": [3.5]},
        "relay": {"direct": [1.0], "relay": [1.125]},
        "nginx": {"direct": [1.5], "nginx": [1.5625]},
    }
    row = "read, 1 client"
    figures = compare_interleaved(row, pairs, {"nginx": 0.04})
    assert figures[figure(row, "turns: nginx added p50 ms")] == 0.062
    assert figures[figure(row, "nginx CPU ms/req")] == 0.04
    assert figure(row, "turns: nginx added p50 ms") not in compare_interleaved(row, {k: v for k, v in pairs.items() if k != "nginx"})


def test_the_gateway_on_its_own_core_is_reported_from_its_own_pair():
    from bench.gateway_overhead import OWN_CORE, compare_interleaved
    from bench.stats import figure

    pairs = {
        "gateway": {"direct": [2.0], "gateway": [2.5]},
        "asgi": {"direct": [3.0], "asgi": [3.5]},
        "relay": {"direct": [1.0], "relay": [1.125]},
        OWN_CORE: {"direct": [4.0], "gateway": [4.125]},
    }
    row = "read, 1 client"
    figures = compare_interleaved(row, pairs, {OWN_CORE: 0.3})
    assert figures[figure(row, "turns: added p50 ms")] == 0.5
    assert figures[figure(row, "turns: gateway on its own core, added p50 ms")] == 0.125
    assert figures[figure(row, "gateway on its own core: CPU ms/req")] == 0.3
