"""What the gateway adds (auth + rate limit + audit + proxy) against calling the service directly, on PostgreSQL.

Four ways in: direct to the registry; through the gateway as it runs (its own protocol, see
gateway/server.py); through a second gateway process on plain uvicorn (`--http httptools`, every
request on the ASGI route), so the protocol's effect is measured side by side in the same run; and,
for scale, through a byte relay (bench/relay.py: one more process on the path that does nothing but
copy bytes), the floor of any proxy process on this machine.

Three routes: (a) a cheap read, `GET /organizations/{id}` (one primary-key lookup: there is no
API route without a database), (b) a database write, volunteer registration (one insert with
its outbox row; the gateway also queues an audit entry), and, at 1 client only, (b) refused by the
registry's validation (422): all of the gateway's write work, little of the service's, so it
separates what the gateway costs from what a registration's work does to the machine. At 1 and at
32 concurrent clients,
direct and through the gateway in alternating rounds (direct, gateway, gateway, direct, ...) so
that a burst of outside load hits both sides alike; each figure is the median of the rounds.
Targets (issue 5): added p50 at 1 client ≤ 0.3 ms; through the gateway on the write route at 32
clients ≥ 0.8 × the direct throughput.

CPU milliseconds per request (user + system time of the process over the run, divided by the
requests answered) do not move with the machine's other load: they say where the time goes.

At one client each route is also measured taking turns (bench.interleave: one request at a time,
alternating between direct and one other way in, the "turns:" figures): both then meet the same
moments of the machine, so the added p50 is a difference of medians of thousands of requests taken
side by side, not of a few rounds taken seconds apart. Those are the figures the one-client target
is read from. Each way in takes turns with direct alone, in a run of its own: when all four took
turns together, every gateway request came after requests through the other gateway process and
the relay, whose work evicted the gateway's code and data from the caches, and every proxy's
added p50 rose by about 0.1 ms (measured on one stack, alternating the two designs three times:
+0.32 to +0.34 ms for the gateway among four ways in, +0.19 to +0.25 ms in a pair). A partner's
requests never meet a second gateway process.

Then the gateway's pair runs once more with the gateway on a core of its own, as in production,
shared only with the client, and everything else (the services, the broker, the other proxies, a
local PostgreSQL) on the other (the "turns: gateway on its own core" columns; bench.stack.own_core).
The client goes with the gateway because on the services' core a direct call's client would wait
behind the registry's own work after each answer, which a client elsewhere does not, and the
gateway would look cheaper than it is. On two cores shared by everything, where the scheduler
puts the gateway added about 0.15 to 0.35 ms to a read or a registration on a slow host (README).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from statistics import median

from bench import interleave
from bench.load import Load, LoadResult, run_load
from bench.payloads import volunteer_template
from bench.stack import (cpu_seconds, direct_headers, gateway_headers, local_postgresql_pids, machine_times, own_core,
                         running_stack, settle)
from deploy.processes import free_port, start_uvicorn, wait_port, wait_ready
from bench.stats import figure
from services.registry.settings import GDY_ORGANIZATION_ID
from tests.harness import Stack

SECONDS = 4
ROUNDS = 5
# At one client the differences sought are tenths of a millisecond and single rounds move by ±0.3 ms
# (the byte relay's rows show it): more rounds for a steadier median.
ROUNDS_ONE_CLIENT = 9
WARMUP_SECONDS = 1
CLIENTS = (1, 32)
VIAS = ("direct", "gateway", "asgi", "relay")
UNSIGNED = ("direct", "relay", "nginx")  # ways in that add no caller context: the client sends it
OWN_CORE = "gateway, own core"  # the gateway's pair again, the gateway (and the client) on a core of its own


@dataclass
class Route:
    label: str
    method: str
    path: str  # under /api/v1
    body: str | None = None  # template, see bench.load
    expect: int | None = None  # the status every answer must have (default: any success)
    clients: tuple[int, ...] = CLIENTS
    turns: int = 1500  # requests per way in, one client taking turns (bench.interleave)


@dataclass
class Side:
    """The runs of one side (direct or through the gateway) of one case."""

    results: list[LoadResult] = field(default_factory=list)
    service_cpu: float = 0.0
    gateway_cpu: float = 0.0  # of the process this side went through (none for direct)
    machine: list[int] = field(default_factory=lambda: [0, 0])  # busy and total clock ticks of the whole machine

    def median(self, attribute: str) -> float:
        return median(getattr(result, attribute) for result in self.results)

    def cpu_ms_per_request(self, seconds: float) -> float:
        return seconds * 1000 / sum(result.requests for result in self.results)


def routes(run_id: str) -> list[Route]:
    return [
        Route("read", "GET", f"/organizations/{GDY_ORGANIZATION_ID}"),
        Route("write", "POST", "/volunteers", volunteer_template(run_id), turns=1000),
        # The same POST refused by the registry's validation (422): the gateway does all its write
        # work (body, audit entry) but the service's is short, so the gateway's own cost shows.
        Route("write refused", "POST", "/volunteers", json.dumps({"name_latin": "Bench {n}", "sex": "female"}),
              expect=422, clients=(1,)),
    ]


def start_asgi_gateway(stack: Stack) -> str:
    """A second gateway on plain uvicorn (same database, keys and services), as part of the stack."""
    port = free_port()
    env = {**stack.env(), "VMC_GATEWAY_PORT": str(port), "VMC_GATEWAY_DATABASE_URL": stack.db_urls["gateway"]}
    stack.procs["asgi"] = start_uvicorn("gateway.app:create_app", port, env, stack.workdir / "asgi.log", http="httptools")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/ready", 60, stack.procs["asgi"])
    return url + "/api/v1"


def start_in_front(stack: Stack, name: str, argv: list[str], port: int) -> str:
    """A process listening on `port` in front of the registry, as part of the stack: its API base URL."""
    with open(stack.workdir / f"{name}.log", "ab") as log:
        stack.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port("127.0.0.1", port, 30)
    return f"http://127.0.0.1:{port}/api/v1"


def start_relay(stack: Stack) -> str:
    """bench/relay.py in front of the registry."""
    port = free_port()
    return start_in_front(stack, "relay", [sys.executable, "-m", "bench.relay", str(port), str(stack.ports["registry"])], port)


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;  # the default 1,000 would close a turn run's one connection midway
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    upstream registry {{ server 127.0.0.1:{upstream}; keepalive 32; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://registry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")  # sbin is not on every PATH


def start_nginx(stack: Stack) -> str | None:
    """nginx in one process (no master) as a reverse proxy in front of the registry; None where nginx
    is not installed."""
    binary = nginx_binary()
    if binary is None:
        return None
    port = free_port()
    conf = stack.workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workdir=stack.workdir, upstream=stack.ports["registry"], port=port))
    return start_in_front(stack, "nginx", [binary, "-p", str(stack.workdir), "-e", str(stack.workdir / "nginx-error.log"),
                                           "-c", str(conf)], port)


class Runner:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.bases = {"direct": stack.urls["registry"] + "/api/v1", "gateway": stack.api, "asgi": start_asgi_gateway(stack),
                      "relay": start_relay(stack)}
        nginx = start_nginx(stack)
        if nginx is not None:
            self.bases["nginx"] = nginx
        self.first = 0

    def load(self, via: str, route: Route, clients: int, seconds: float) -> Load:
        # Direct callers carry the signed context the gateway would add: valid 60 s, so made per run.
        headers = direct_headers(self.stack) if via in UNSIGNED else gateway_headers(self.stack)
        if route.body is not None:
            headers["Content-Type"] = "application/json"
        # A run sends far fewer than 100,000 requests: bodies stay unique across runs, and the ~170 runs
        # keep {n} within its 8 digits.
        self.first += 100_000
        return Load(self.bases[via] + route.path, clients, seconds, route.method, headers, route.body, self.first, route.expect)

    def run(self, side: Side, load: Load, via: str) -> None:
        settle(self.stack)
        proxy = via if via in ("asgi", "relay") else "gateway"
        before = cpu_seconds(self.stack, "registry"), cpu_seconds(self.stack, proxy), machine_times()
        result = run_load(load)
        side.service_cpu += cpu_seconds(self.stack, "registry") - before[0]
        side.gateway_cpu += cpu_seconds(self.stack, proxy) - before[1]
        after = machine_times()
        side.machine[0] += after[0] - before[2][0]
        side.machine[1] += after[1] - before[2][1]
        if result.failures:
            raise RuntimeError(f"{load.method} {load.url} at {load.connections} clients: {result.failures} failed requests, "
                               f"the first: {result.first_failure}")
        side.results.append(result)

    def interleaved(self, route: Route, requests: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
        """One client taking turns between direct and each other way in, a pair at a time
        (bench.interleave): for each way in, milliseconds by way in of its pair; and the CPU
        milliseconds per request of each way in's own process over its turns. Then the gateway's
        pair once more with the gateway and the client on one core, everything else on the other
        (`OWN_CORE`, see `bench.stack.own_core`)."""
        pairs, cpu = {}, {}
        for via in [*VIAS[1:], *(["nginx"] if "nginx" in self.bases else [])]:
            pairs[via], cpu[via] = self.pair(route, via, requests)
        settle(self.stack)
        others = [proc.pid for name, proc in self.stack.procs.items() if name != "gateway"]
        if self.stack.broker.proc is not None:
            others.append(self.stack.broker.proc.pid)
        # The client beside the gateway: on the other core it would wait, on direct calls only,
        # behind the registry's own work after each answer (a client elsewhere does not).
        with own_core([self.stack.procs["gateway"].pid, os.getpid()], others + local_postgresql_pids()) as placed:
            if placed:
                pairs[OWN_CORE], cpu[OWN_CORE] = self.pair(route, "gateway", requests, settled=True)
        return pairs, cpu

    def pair(self, route: Route, via: str, requests: int, settled: bool = False) -> tuple[dict[str, list[float]], float]:
        """Direct and `via` taking turns: milliseconds by way in, and `via`'s CPU ms per request."""
        if not settled:
            settle(self.stack)
        ways = []
        for side in ("direct", via):
            headers = direct_headers(self.stack) if side in UNSIGNED else gateway_headers(self.stack)
            if route.body is not None:
                headers["Content-Type"] = "application/json"
            ways.append(interleave.Way(side, self.bases[side] + route.path, headers))
        self.first += 100_000
        before = cpu_seconds(self.stack, via)
        latencies = interleave.turns(ways, route.method, route.body, requests, self.first, route.expect)
        return latencies, (cpu_seconds(self.stack, via) - before) * 1000 / (requests + interleave.WARMUP)

    def case(self, route: Route, clients: int, seconds: float, rounds: int) -> dict[str, Side]:
        for via in VIAS:
            self.run(Side(), self.load(via, route, clients, WARMUP_SECONDS), via)
        sides = {via: Side() for via in VIAS}
        for round_ in range(rounds):
            for via in VIAS if round_ % 2 == 0 else reversed(VIAS):
                self.run(sides[via], self.load(via, route, clients, seconds), via)
        return sides


def run(quick: bool = False) -> dict[str, float]:
    seconds, rounds, rounds_one = (2, 1, 1) if quick else (SECONDS, ROUNDS, ROUNDS_ONE_CLIENT)
    figures: dict[str, float] = {}
    with running_stack("postgresql") as stack:
        runner = Runner(stack)
        for route in routes(secrets.token_hex(3)):
            for clients in route.clients:
                row = f"{route.label}, {clients} client{'s' if clients > 1 else ''}"
                sides = runner.case(route, clients, seconds, rounds_one if clients == 1 else rounds)
                figures.update(compare(row, sides))
                if clients == 1:
                    requests = route.turns // (10 if quick else 1)
                    figures.update(compare_interleaved(row, *runner.interleaved(route, requests)))
    return figures


def compare(row: str, sides: dict[str, Side]) -> dict[str, float]:
    direct, gateway, asgi, relay = sides["direct"], sides["gateway"], sides["asgi"], sides["relay"]
    return {
        figure(row, "direct rps"): round(direct.median("rps")),
        figure(row, "gateway rps"): round(gateway.median("rps")),
        figure(row, "throughput ratio"): round(gateway.median("rps") / direct.median("rps"), 3),
        figure(row, "direct p50 ms"): round(direct.median("p50_ms"), 3),
        figure(row, "gateway p50 ms"): round(gateway.median("p50_ms"), 3),
        figure(row, "added p50 ms"): round(gateway.median("p50_ms") - direct.median("p50_ms"), 3),
        figure(row, "direct p99 ms"): round(direct.median("p99_ms"), 3),
        figure(row, "gateway p99 ms"): round(gateway.median("p99_ms"), 3),
        figure(row, "added p99 ms"): round(gateway.median("p99_ms") - direct.median("p99_ms"), 3),
        figure(row, "service CPU ms/req"): round(direct.cpu_ms_per_request(direct.service_cpu), 3),
        # How busy the machine's cores were while clients called the service directly (servers,
        # broker, databases and wrk together): at one client a registration keeps them nearly full.
        figure(row, "direct: machine busy"): round(direct.machine[0] / max(1, direct.machine[1]), 2),
        figure(row, "gateway CPU ms/req"): round(gateway.cpu_ms_per_request(gateway.gateway_cpu), 3),
        figure(row, "ASGI route: ratio"): round(asgi.median("rps") / direct.median("rps"), 3),
        figure(row, "ASGI route: added p50 ms"): round(asgi.median("p50_ms") - direct.median("p50_ms"), 3),
        figure(row, "ASGI route: CPU ms/req"): round(asgi.cpu_ms_per_request(asgi.gateway_cpu), 3),
        figure(row, "byte relay: added p50 ms"): round(relay.median("p50_ms") - direct.median("p50_ms"), 3),
        figure(row, "byte relay: CPU ms/req"): round(relay.cpu_ms_per_request(relay.gateway_cpu), 3),
    }


def compare_interleaved(row: str, pairs: dict[str, dict[str, list[float]]], cpu: dict[str, float] | None = None) -> dict[str, float]:
    """The added p50 of each way in, from its own pair with direct (and nginx's, where it ran, with
    its CPU per request)."""
    p50 = {via: interleave.added(latencies) for via, latencies in pairs.items()}
    figures = {
        figure(row, "turns: direct p50 ms"): round(p50["gateway"]["direct"][0], 3),
        figure(row, "turns: added p50 ms"): round(p50["gateway"]["gateway"][1], 3),
        figure(row, "turns: ASGI route added p50 ms"): round(p50["asgi"]["asgi"][1], 3),
        figure(row, "turns: byte relay added p50 ms"): round(p50["relay"]["relay"][1], 3),
    }
    if OWN_CORE in p50:
        figures[figure(row, "turns: gateway on its own core, added p50 ms")] = round(p50[OWN_CORE]["gateway"][1], 3)
        if cpu and OWN_CORE in cpu:
            figures[figure(row, "gateway on its own core: CPU ms/req")] = round(cpu[OWN_CORE], 3)
    if "nginx" in p50:
        figures[figure(row, "turns: nginx added p50 ms")] = round(p50["nginx"]["nginx"][1], 3)
        if cpu and "nginx" in cpu:
            figures[figure(row, "nginx CPU ms/req")] = round(cpu["nginx"], 3)
    return figures
