"""Instructions each proxy process runs per request (valgrind's callgrind): a count the host's speed does not move.

Times on this shared host move by several times from one hour to the next (bench gateway_overhead:
the registry's CPU per read was 0.66 ms in one run and 3.0–3.5 ms in others, on the same code), so
a change worth 10–20 µs of the gateway's CPU cannot be told apart from the noise by timing it.
callgrind counts the instructions a process executes in user space: the same count for the same
code and requests, whatever else the machine is doing. It does not count the kernel's work (the
system calls, the same for every proxy here) nor what cache misses cost, so it says how much code
a request runs, not how long it takes.

Each way in runs under callgrind in front of the registry of one PostgreSQL stack, in turn: the
gateway as it runs (its own protocol), the gateway on plain uvicorn (the ASGI route), the byte relay
(bench/relay.py) and, where installed, nginx (one process, the configuration of bench
gateway_overhead). For each route (the routes of bench gateway_overhead), after a warm-up,
counting is switched on for a fixed number of one-client requests and the total divided by them.
Whatever else the process does meanwhile (the gateway's audit writer, timers) is counted too: it is
part of what a request costs (but for the key cache's expiry, see `start_way`).
"""
from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import interleave
from bench.gateway_overhead import NGINX_CONF, UNSIGNED, nginx_binary, routes, start_in_front
from bench.stack import direct_headers, gateway_headers, running_stack
from bench.stats import figure
from deploy.processes import free_port, start_uvicorn, stop, wait_ready
from tests.harness import Stack

REQUESTS = 300  # counted per route and way in (a count, not a time: a few hundred are plenty)
WARMUP = 100  # before counting: the key looked up, connections open, code paths taken once
WAYS = ("gateway", "asgi", "relay", "nginx")
CALLGRIND = "callgrind"


def callgrind_prefix(out: Path) -> list[str]:
    """valgrind's callgrind with counting off until `callgrind_control -i on`; dumps go to `out`.<pid>.<n>."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]


def dumped_total(text: str) -> int:
    """The instruction count of a callgrind dump: its `totals:` line (a dump's `summary:` line, before
    it, can read 0 when counting was switched on by callgrind_control), else its `summary:` line."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("totals", "summary") and value.strip():
            found[name] = int(value.split()[0])
    if not found:
        raise ValueError("no totals line in the callgrind dump")
    return found.get("totals", found.get("summary"))


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def start_way(stack: Stack, way: str, out: Path) -> tuple[subprocess.Popen, str]:
    """One way in under callgrind, in front of the stack's registry: its process and API base URL."""
    port = free_port()
    if way in ("gateway", "asgi"):
        env = {**stack.env(), "VMC_GATEWAY_PORT": str(port), "VMC_GATEWAY_DATABASE_URL": stack.db_urls["gateway"],
               # Under callgrind a request takes some 50 times longer, so the key cache (2 s) would expire
               # every few dozen requests instead of every several hundred, and the database lookups
               # would be counted far beyond their share: keys stay cached during the count.
               "VMC_GATEWAY_KEY_CACHE_SECONDS": "3600"}
        proc = start_uvicorn("gateway.app:create_app", port, env, stack.workdir / f"{way}-callgrind.log",
                             http="httptools" if way == "asgi" else None, wrap=callgrind_prefix(out))
        stack.procs[f"{way}-callgrind"] = proc
        wait_ready(f"http://127.0.0.1:{port}/ready", 300, proc)
        return proc, f"http://127.0.0.1:{port}/api/v1"
    if way == "relay":
        argv = [sys.executable, "-m", "bench.relay", str(port), str(stack.ports["registry"])]
    else:
        conf = stack.workdir / "nginx-callgrind.conf"
        conf.write_text(NGINX_CONF.format(workdir=stack.workdir, upstream=stack.ports["registry"], port=port))
        argv = [nginx_binary(), "-p", str(stack.workdir), "-e", str(stack.workdir / "nginx-error.log"), "-c", str(conf)]
    base = start_in_front(stack, f"{way}-callgrind", [*callgrind_prefix(out), *argv], port)
    return stack.procs[f"{way}-callgrind"], base


def counted(pid: int, out: Path, work: Callable[[], None]) -> int:
    """Instructions the process `pid` (started under `callgrind_prefix(out)`) runs while `work()` runs."""
    control(pid, "--zero")
    control(pid, "--instr=on")
    try:
        work()
    finally:
        control(pid, "--instr=off")
    before = set(out.parent.glob(f"{out.name}.{pid}.*"))
    control(pid, "--dump")
    dumps = set(out.parent.glob(f"{out.name}.{pid}.*")) - before
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for process {pid} (is it still running?)")
    return dumped_total(max(dumps, key=lambda path: path.stat().st_mtime).read_text())


def count(stack: Stack, way: str, workdir: Path, requests: int, warmup: int) -> dict[str, float]:
    """Instructions per request of one way in, by route label."""
    out = workdir / f"{way}.callgrind"
    proc, base = start_way(stack, way, out)
    counts, first = {}, 0
    try:
        for route in routes(secrets.token_hex(3)):
            headers = direct_headers(stack) if way in UNSIGNED else gateway_headers(stack)
            if route.body is not None:
                headers["Content-Type"] = "application/json"
            target = [interleave.Way(way, base + route.path, headers)]
            first += 1_000_000
            interleave.turns(target, route.method, route.body, 0, first, route.expect, warmup=warmup)
            counts[route.label] = counted(proc.pid, out, partial(
                interleave.turns, target, route.method, route.body, requests, first + warmup + 1, route.expect, warmup=0)) / requests
    finally:
        stop(proc, timeout=60)
    return counts


def run(quick: bool = False) -> dict[str, float]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    requests, warmup = (30, 20) if quick else (REQUESTS, WARMUP)
    ways = [way for way in WAYS if way != "nginx" or nginx_binary() is not None]
    figures: dict[str, float] = {}
    with running_stack("postgresql") as stack:
        workdir = stack.workdir / CALLGRIND
        workdir.mkdir()
        counts = {way: count(stack, way, workdir, requests, warmup) for way in ways}
    names = {"gateway": "gateway", "asgi": "ASGI route", "relay": "byte relay", "nginx": "nginx"}
    for label in counts["gateway"]:
        row = f"{label}, 1 client"
        for way in ways:
            figures[figure(row, f"{names[way]}: instructions/req")] = round(counts[way][label])
        if "nginx" in counts:
            figures[figure(row, "gateway ÷ nginx")] = round(counts["gateway"][label] / counts["nginx"][label], 1)
    return figures
