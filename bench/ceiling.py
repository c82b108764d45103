"""The machine's ceiling for a service's write: the same rows and outbox rows written raw, with no service.

A benchmark compares what the gateway achieves with what the database itself takes on this machine
at the same moment (the host's speed moves by several times from hour to hour, so only a ratio
measured in the same run means anything). The rows go into the same tables, made by the service's
own migrations in a fresh database of the stack's server (PostgreSQL) or work folder (SQLite):

- `bulk`: batches, one transaction each. PostgreSQL: asyncpg `copy_records_to_table`, the fastest
  write measured here (../shared/measured.md, "Bulk ingestion"); SQLite: sqlite3 `executemany`.
- `singles`: one row and its outbox row per transaction, from N concurrent tasks, each with its own
  asyncpg connection; on SQLite the tasks take turns on one sqlite3 connection (one writer, as in
  the services).

Rows are built and converted to the driver's values before the clock starts (with SQLAlchemy's own
bind processors, so they are stored exactly as the service stores them): only the database's part
is timed.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import asyncpg
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect
from sqlalchemy.engine import Dialect

from bench.load import LoadResult
from bench.stats import figure, percentile
from shared.db import Migration, is_sqlite, make_engine, migrate
from shared.events import CATALOGUE, CloudEvent
from shared.outbox import OutboxRecord
from tests.harness import Stack

OUTBOX: Table = OutboxRecord.__table__
# Single-row transactions per second `singles` gets rows for (raw sqlite3 took 4,700/s on a busy hour
# here, raw asyncpg 1,600/s): should they run out, the turn is cut short, its rate still right.
TX_PER_SECOND = 8000
# Statements per table and row shape: (table name, column names, the driver's values of each row).
Part = tuple[str, list[str], list[tuple]]


def fresh_database(stack: Stack, name: str, migrations: Sequence[Migration]) -> str:
    """The URL of a new database beside the stack's (dropped with them), with `migrations` applied."""
    url = stack.databases.url(name)

    async def run() -> None:
        engine = make_engine(url)
        try:
            await migrate(engine, migrations)
        finally:
            await engine.dispose()

    asyncio.run(run())
    return url


def outbox_row(event: CloudEvent, now: datetime) -> dict:
    """The outbox row the services write for `event` (shared.outbox.add_events)."""
    return {"event_id": event.id, "topic": CATALOGUE[event.type].topic, "key": event.subject,
            "value": event.to_bytes(), "created_at": now}


def driver_values(table: Table, rows: Sequence[dict], dialect: Dialect) -> tuple[list[str], list[tuple]]:
    """(columns, records): the rows' values as the driver receives them from SQLAlchemy. Columns the
    rows leave out (the outbox's sequence number) get the database's default."""
    columns = [c for c in table.columns if c.name in rows[0]]
    processors = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
    records = [tuple(p(row[c.name]) if p else row[c.name] for c, p in zip(columns, processors)) for row in rows]
    return [c.name for c in columns], records


def _dialect(url: str) -> Dialect:
    return aiosqlite_dialect() if is_sqlite(url) else asyncpg_dialect()


def _parts(url: str, table: Table, rows: Sequence[dict], events: Sequence[CloudEvent]) -> list[Part]:
    now = datetime.now(timezone.utc)
    dialect = _dialect(url)
    return [(t.name, *driver_values(t, r, dialect)) for t, r in
            ((table, rows), (OUTBOX, [outbox_row(e, now) for e in events]))]


def _slice(parts: Sequence[Part], start: int, stop: int) -> list[Part]:
    return [(name, columns, records[start:stop]) for name, columns, records in parts]


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


def _sqlite(url: str) -> sqlite3.Connection:
    """A connection set up as the services set theirs (shared.db.make_engine): WAL, synchronous=NORMAL."""
    conn = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=10000"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def _insert(name: str, columns: list[str], placeholder: Callable[[int], str]) -> str:
    return f'INSERT INTO {name} ({", ".join(columns)}) VALUES ({", ".join(placeholder(i) for i in range(1, len(columns) + 1))})'


# ---- bulk --------------------------------------------------------------------------------------

def bulk(url: str, table: Table, rows: Sequence[dict], events: Sequence[CloudEvent], batch: int) -> list[float]:
    """Write `rows` into `table` and an outbox row per event (the i-th event belongs to the i-th row),
    `batch` rows per transaction; the seconds each batch took."""
    parts = _parts(url, table, rows, events)
    batches = [_slice(parts, start, start + batch) for start in range(0, len(rows), batch)]
    return _executemany(url, batches) if is_sqlite(url) else asyncio.run(_copy(url, batches))


async def _copy(url: str, batches: list[list[Part]]) -> list[float]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        times = []
        for parts in batches:
            began = time.perf_counter()
            async with conn.transaction():
                for name, columns, records in parts:
                    await conn.copy_records_to_table(name, records=records, columns=columns)
            times.append(time.perf_counter() - began)
        return times
    finally:
        await conn.close()


def _executemany(url: str, batches: list[list[Part]]) -> list[float]:
    conn = _sqlite(url)
    try:
        times = []
        for parts in batches:
            began = time.perf_counter()
            conn.execute("BEGIN")
            for name, columns, records in parts:
                conn.executemany(_insert(name, columns, lambda i: "?"), records)
            conn.execute("COMMIT")
            times.append(time.perf_counter() - began)
        return times
    finally:
        conn.close()


# ---- single rows -------------------------------------------------------------------------------

def singles(url: str, table: Table, rows: Sequence[dict], events: Sequence[CloudEvent], tasks: int,
            seconds: float) -> LoadResult:
    """One row and its outbox row per transaction, `tasks` at a time, until `seconds` have passed or
    the rows run out (build more rows than the database can take in that time)."""
    parts = _parts(url, table, rows, events)
    return asyncio.run(_singles(url, parts, len(rows), tasks, seconds))


async def _singles(url: str, parts: list[Part], count: int, tasks: int, seconds: float) -> LoadResult:
    # Each task takes the next row number; on PostgreSQL each task has a connection of its own.
    sqlite = is_sqlite(url)
    statements = [_insert(name, columns, lambda i: "?" if sqlite else f"${i}") for name, columns, _ in parts]
    next_row = iter(range(count))
    latencies: list[float] = []

    if sqlite:
        conn = _sqlite(url)

        async def write(_: object, i: int) -> None:
            # The transactions of the other tasks ready to write go first: N clients queueing for the
            # one writer, so the latencies include the wait, as the service's do.
            await asyncio.sleep(0)
            conn.execute("BEGIN")
            for statement, (_, _, records) in zip(statements, parts):
                conn.execute(statement, records[i])
            conn.execute("COMMIT")

        connections: list = [None] * tasks
    else:
        async def write(connection: asyncpg.Connection, i: int) -> None:
            async with connection.transaction():
                for statement, (_, _, records) in zip(statements, parts):
                    await connection.execute(statement, *records[i])

        connections = [await _connect(url) for _ in range(tasks)]

    async def task(connection, deadline: float) -> None:
        while (began := time.perf_counter()) < deadline and (i := next(next_row, None)) is not None:
            await write(connection, i)
            latencies.append((time.perf_counter() - began) * 1000)

    try:
        began = time.perf_counter()
        await asyncio.gather(*(task(c, began + seconds) for c in connections))
        elapsed = time.perf_counter() - began
    finally:
        if sqlite:
            conn.close()
        else:
            await asyncio.gather(*(c.close() for c in connections))
    return LoadResult(len(latencies), elapsed, 0, percentile(latencies, 50), percentile(latencies, 99))


async def _connect(url: str, patience: float = 60.0) -> asyncpg.Connection:
    """A connection of its own, waiting (bounded) while the server has no slot left: the server is
    shared with other stacks, whose tests open and close connections all the time."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await asyncpg.connect(_dsn(url))
        except asyncpg.TooManyConnectionsError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def rows_for(seconds: float) -> int:
    """How many rows to build for a `singles` turn of `seconds`."""
    return int(seconds * TX_PER_SECOND)


# ---- figures -----------------------------------------------------------------------------------

def method(url: str, bulk: bool) -> str:
    """How the ceiling was written, as its table row says."""
    if is_sqlite(url):
        return "sqlite3 executemany" if bulk else "raw sqlite3"
    return "asyncpg COPY" if bulk else "raw asyncpg"


def batch_result(rows: int, seconds: Sequence[float]) -> LoadResult:
    """Batches that took `seconds` each, as a load result: rows per second, and p50 and p99 of a batch."""
    ms = [s * 1000 for s in seconds]
    return LoadResult(rows, sum(seconds), 0, percentile(ms, 50), percentile(ms, 99))


def side_by_side(row: str, rate_column: str, measured: LoadResult, probe: float, ceiling: LoadResult,
                 ceiling_probe: float, how: str, target: float | None = None,
                 latencies: bool = True) -> dict[str, object]:
    """Two rows of a benchmark's table: `row` (what the service achieved) with its ratio to the ceiling
    (and the target, if any), and `row: ceiling, how` below it; each with the CPU probe taken just
    before it was measured (the host's speed moves: a ratio of two turns at very different probe
    figures says little)."""
    ratio = measured.rps / ceiling.rps
    figures: dict[str, object] = {}
    for name, result, cpu in ((row, measured, probe), (f"{row}: ceiling, {how}", ceiling, ceiling_probe)):
        figures[figure(name, rate_column)] = round(result.rps)
        if latencies:
            figures[figure(name, "p50 ms")] = round(result.p50_ms, 2)
            figures[figure(name, "p99 ms")] = round(result.p99_ms, 2)
        figures[figure(name, "cpu probe µs")] = cpu
        if name == row:
            figures[figure(name, "÷ ceiling")] = round(ratio, 3)
            if target is not None:
                figures[figure(name, "target")] = f"≥ {target:g}"
                figures[figure(name, "met")] = "yes" if ratio >= target else f"no: {ratio / target:.0%} of it"
    return figures
