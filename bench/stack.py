"""The system under test: the test harness's Stack (broker, services, gateway as real processes).

Benchmarks start one stack per database, with the gateway's rate limit and per-key concurrency cap
raised so that the limiters are still on the path (they are part of what the gateway costs) but
never refuse a benchmark request.
"""
from __future__ import annotations

import asyncio
import os
import platform
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import asyncpg

from bench.load import generator_name
from shared.caller import GDY_ORGANIZATION_ID, SCOPES, CallerContext, encode_caller
from tests.harness import Broker, Databases, Stack, new_workdir, pg_server_url, remove_workdir

T = TypeVar("T")
DATABASES = ("postgresql", "sqlite")
BENCH_ENV = {
    "VMC_RATE_LIMIT_PER_MINUTE": "100000000",
    # The per-key cap (32) counts a request until its handler returns, after the answer is sent: a
    # client with 32 keep-alive connections that sends again at once gets 429s. Twice the clients.
    "VMC_GATEWAY_MAX_CONCURRENT_PER_KEY": "64",
    "VMC_LOG_LEVEL": "WARNING",
}


@contextmanager
def running_stack(database: str) -> Iterator[Stack]:
    """A fresh stack on `database` ('postgresql' or 'sqlite'), stopped and its databases dropped after.

    PostgreSQL is the server of VMC_TEST_DATABASE_URL, else 127.0.0.1:5432 (as for the tests).
    """
    if database not in DATABASES:
        raise ValueError(f"database must be one of {DATABASES}")
    workdir = new_workdir()
    broker = stack = None
    try:
        broker = Broker(workdir)
        stack = Stack(broker=broker, workdir=workdir, databases=Databases(workdir, database), extra_env=dict(BENCH_ENV))
        stack.start()
        yield stack
    except BaseException:
        print_errors(workdir)
        raise
    finally:
        if stack is not None:
            stack.close()
        if broker is not None:
            broker.close()
        remove_workdir(workdir)


def print_errors(workdir: Path, lines: int = 5) -> None:
    """The last error records of each process, before its logs are removed with the stack."""
    for log in sorted(workdir.glob("*.log")):
        errors = [line for line in log.read_text(errors="replace").splitlines() if '"level":"error"' in line or "Traceback" in line]
        for line in errors[-lines:]:
            print(f"{log.stem}: {line[:2000]}", file=sys.stderr)


def gateway_headers(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.admin_key}"}


def direct_headers(stack: Stack) -> dict[str, str]:
    """What the gateway would add for the national admin key: valid for 60 s, so make them per run."""
    caller = CallerContext(
        key_id="bench-direct", organization_id=uuid.UUID(GDY_ORGANIZATION_ID), scopes=frozenset(SCOPES), national=True,
    )
    return encode_caller(caller, stack.secret)


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds(stack: Stack, name: str) -> float:
    """CPU time (user + system) a part of the stack has used so far: a figure the machine's noise does not move."""
    return process_cpu_seconds(stack.procs[name].pid)


def settle(stack: Stack, quiet: float = 0.1, window: float = 0.5, timeout: float = 60.0) -> None:
    """Wait until the stack's processes are nearly idle (outbox relays and consumers caught up), then
    vacuum its PostgreSQL databases (`vacuum`).

    So that one run's after-effects (events still being published and projected) are not charged
    to the next run. Gives up after `timeout` seconds: a busy stack is then measured as it is.
    """
    _wait_quiet(stack, quiet, window, timeout)
    vacuum(stack)


def probed(stack: Stack, measure: Callable[[], T], settle_timeout: float = 60.0) -> tuple[T, float]:
    """`measure()` on a settled stack (`settle`), and the CPU probe (`cpu_speed`) taken just before it:
    a figure and the speed of the cores it was measured at."""
    settle(stack, timeout=settle_timeout)
    probe = cpu_speed()
    return measure(), probe


def vacuum(stack: Stack) -> None:
    """VACUUM (ANALYZE) each PostgreSQL database of the stack, as autovacuum would in production.

    The PostgreSQL of the machine the figures come from runs with autovacuum off (`SHOW autovacuum`).
    Without it the registry's outbox (each row inserted, then marked published) keeps every dead
    version in its index on published_at, and the relay's query for unpublished rows reads them all:
    PostgreSQL's CPU per registration rose from 1.1 to 2.8 ms over 16,000 registrations at one client,
    a drift that slowed every later run. Nothing to do on SQLite.
    """
    urls = [url.replace("postgresql+asyncpg://", "postgresql://") for url in stack.db_urls.values() if url.startswith("postgresql")]

    async def run() -> None:
        for url in urls:
            conn = await asyncpg.connect(url, timeout=10)
            try:
                await conn.execute("VACUUM (ANALYZE)")
            finally:
                await conn.close()

    if urls:
        asyncio.run(run())


def _wait_quiet(stack: Stack, quiet: float, window: float, timeout: float) -> None:
    pids = [proc.pid for proc in stack.procs.values()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(process_cpu_seconds(pid) for pid in pids)
        time.sleep(window)
        if sum(process_cpu_seconds(pid) for pid in pids) - before < quiet * window:
            return


def threads_of(pid: int) -> list[int]:
    """The thread ids of a process (empty if it is gone)."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def local_postgresql_pids() -> list[int]:
    """The PostgreSQL server processes on this machine (the stack's databases live there when its
    server is local): postmaster, background workers and a backend per connection."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    pids.append(int(entry))
            except OSError:  # gone meanwhile
                pass
    return pids


@contextmanager
def own_core(alone: list[int], rest: list[int]) -> Iterator[bool]:
    """Within the block, the processes `alone` (every thread) run on one core of their own and the
    processes `rest` (every thread) on the others; yields False, changing nothing, on a machine
    with a single core. Each thread's own set of cores is restored after (threads and processes
    started within the block, such as a new PostgreSQL backend, keep the set they started with).

    So a proxy can be measured with a core of its own, as in production, instead of taking turns
    with the services, the database and the client for two cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        yield False
        return
    saved: dict[int, set[int]] = {}

    def place(pids: list[int], on: set[int]) -> None:
        for pid in pids:
            for tid in threads_of(pid):
                try:
                    saved.setdefault(tid, os.sched_getaffinity(tid))
                    os.sched_setaffinity(tid, on)
                except (ProcessLookupError, PermissionError):  # gone, or not ours to move
                    pass

    try:
        place(alone, {cores[0]})
        place(rest, set(cores[1:]))
        yield True
    finally:
        for tid, on in saved.items():
            try:
                os.sched_setaffinity(tid, on)
            except (ProcessLookupError, PermissionError):
                pass


def machine_times() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks, all cores together."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def machine_busy(window: float = 1.0) -> float:
    """Share of the machine's CPU time spent busy over `window` seconds (before a benchmark: others' load)."""
    busy0, total0 = machine_times()
    time.sleep(window)
    busy1, total1 = machine_times()
    return (busy1 - busy0) / max(1, total1 - total0)


def cpu_speed(repeat: int = 7) -> float:
    """Microseconds one core takes for a fixed pure-Python loop, best of `repeat`: the speed of the
    cores at the moment, which on a shared host moves by several times from hour to hour (seen here:
    the registry's CPU per read was 0.66 ms in one run and 3.5 ms in another, on the same code).
    Figures are comparable between runs only at similar speeds."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        total = 0
        for i in range(100_000):
            total += i
        best = min(best, time.perf_counter() - began)
    return round(best * 1e6, 0)


def machine() -> dict:
    """What the figures were measured on (Linux: the harness reads /proc throughout)."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.machine())
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    memory_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": postgresql_version(),
        "sqlite": sqlite3.sqlite_version,
        "load_generator": generator_name(),
    }


def postgresql_version() -> str:
    async def ask() -> str:
        conn = await asyncpg.connect(pg_server_url(), timeout=2)
        try:
            return await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()

    try:
        return asyncio.run(ask())
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return "unreachable"
