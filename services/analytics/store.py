"""The analytics read store: one DuckDB database per replica, built only from the event log.

Two writers, many readers. The service holds one DuckDB connection; every batch of events is applied
under `_write_lock` in one DuckDB transaction, which stores the entities and activity rows and notes what
it changed in `pending_*`. The derived tables (the summary, the cells and totals, the skill pairs) are
brought up to the rows by the upkeep (`projections.Upkeep`, `catch_up`) in a transaction of its own on a
cursor of its own (`write_aside`), beside the batches: no table is written by both but `pending_*`, whose
rows one inserts and the other deletes once committed. So a submission counts in an answer read from the
activity rows when its batch commits, and in one read from a derived table when the upkeep has taken it
in; each answer's `as_of` says which (store_state 'events' or 'derived'). Queries read through their own
cursor (a connection to the same database with its own snapshot), in a worker thread (`read`): a query
never waits for a write, a write never waits for a query, and neither blocks the event loop.

Denormalised at write time, so a dashboard scans one table and joins nothing: each `activity` row
carries its volunteer's merge survivor (`survivor_id`, and `volunteer_key`, the survivor's integer
key: distinct volunteers are counted on integers, about twice as fast as on UUIDs), the survivor's
sex, date of birth and residence (province, and district: the first four digits of the commune), the age band on the activity date, and the programme's code. Every
volunteer the store hears of gets a row in `volunteer` and a key from the `volunteer_keys` sequence
(a stub with no attributes when an activity or a merge names a volunteer before their registration
arrives). A batch that changes a volunteer (update, merge; chains A into B into C flattened in any
order) rewrites the denormalised columns of the activities naming that volunteer or counted for it,
from the stored volunteer state, in the same transaction: whatever order the events came in, a row
ends up with the attributes of its volunteer's current survivor. `volunteer_summary` holds each
survivor's verified hours per programme, project, type, focus area and organisation, recomputed for
the volunteers a batch touched; `skill_pair` holds, per survivor and instrument with a baseline and an
endline, what `/analytics/skills` reads of them (totals, the items scored in both, typed) beside the
survivor's verified hours and the (programme, project, type, focus area) of their verified activities, from
the summary: kept for the survivors whose assessments, merges or summary rows a batch changed, so a skills
question reads one row per assessed volunteer, not the assessments' JSON nor the summary. `skill_totals` holds
skills by programme and hours band whole (counts and sums, so means), moved by the difference of the pairs a
batch changed: the dashboard's question reads a few dozen rows.
The keys depend on arrival order, so they are not figures (`contents` leaves them out).

Rollups shaped to the dashboards (design 3, kept by difference from the activity rows). Each activity row
carries its `month`; tables of cells (`CELLS`) hold, per combination of a few dimensions (with the month or
without) and status, and per chunk of volunteer keys (`CHUNK_BITS`), the sums and a bitmap of the chunk's
volunteers. A batch notes each activity row it inserts, and each stored row as it was before it changes it
(`pending_activity`); the upkeep reads the rows of the volunteers whose counted rows may have changed (the
same keys as the summary's, over the counted statuses) as the cells hold them (the rows now, those noted
replaced by their first note) and as they are now, grouped at the cells' common grain (`ROLLUP_GRAIN`: every
cell dimension, month, status, survivor key), and moves each cell by the groups that changed (old EXCEPT
new, new EXCEPT old): the sums by their difference, the bits of those volunteers cleared where they were and
set where they are, in their chunks only (each cell row found by its indexed `cell`, the key and chunk as one
text; a bitmap rewritten only where it changes). New activity rows of volunteers nothing else changed skip
the volunteers' rows: they only add (sums added, bits set). Exact, retracted when an activity changes, and order-independent, as
the summary is. The rebuild computes them once at its end. A question whose dimensions, filters and dates a
table of cells covers is answered from it (`queries.rollup_for`), any other from the activity rows.

Exactly-once. Every projection is idempotent by construction: an activity keeps its highest
revision (re-applying a revision changes nothing), volunteers, organisations and projects keep the
state of their latest event (time, then event id), erasures and merges are sets, an assessment is
stored once, `as_of` takes the greatest time, and the summary is recomputed from the rows. So an
event applied twice (redelivered after a crash, re-published by the outbox after a broker loss with a
new offset but the same id, or read again after a rebalance) leaves the figures as they were. On top
of that the live consumer records the ids of the events it applied (`processed_events`, checked per
batch in the same transaction) so that duplicates are counted as such in /metrics. The rebuild's bulk
path does not record activity event ids (the largest part of a log): it records, per partition, the
next offset it has read (`consumed_offsets`, in the transaction of the batch), and an offline rebuild
commits those offsets to the service's consumer group, so the service started on the new store
resumes where the rebuild ended instead of re-reading the log. An activity event delivered again
after that (a re-publish) is applied again, harmlessly. Offsets of different partitions are
independent positions, never compared; an event present in two partitions (a re-publish after a
topic was re-created) is again harmless.

Attributes of a volunteer the store has not heard of yet (an activity before its registration) are
NULL until the registration arrives: the activity counts in hours, and in the "unknown" group of sex
and age band.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import duckdb
from fastapi import Depends, Request

MEMORY = ":memory:"
# DuckDB checkpoints inside a commit once the write-ahead log plus its estimate of the transaction passes
# this (16 MB by default). A live batch's estimate passes 16 MB on its own at 10 M activities (its updates of
# scattered cells), so every commit became a checkpoint rewriting every table it touched: ~1 s a batch on a
# 10 M store, where the batch's work took ~0.5 s and the WAL it writes is ~0.7 MB (2026-12-03, bench/README.md
# "Checkpoints"). At 256 MB a checkpoint comes every few hundred batches; the log is replayed at start-up
# (a few seconds at most) and the file is checkpointed on close.
CHECKPOINT_THRESHOLD = "256MB"

DDL = """
CREATE SEQUENCE IF NOT EXISTS volunteer_keys;
-- The columns after ben_children are denormalised from `volunteer` and `program` (module docstring).
CREATE TABLE IF NOT EXISTS activity (
    id UUID PRIMARY KEY, revision INTEGER NOT NULL, volunteer_id UUID, project_id UUID, program_id UUID,
    organization_id UUID, activity_type VARCHAR, focus_area VARCHAR, date DATE, hours DOUBLE,
    approved_hours DOUBLE, status VARCHAR, location_code VARCHAR, province VARCHAR, district VARCHAR,
    ben_female INTEGER, ben_male INTEGER, ben_other INTEGER, ben_children INTEGER,
    survivor_id UUID, volunteer_key INTEGER, sex VARCHAR, date_of_birth DATE, residence_province VARCHAR,
    residence_district VARCHAR, age_band VARCHAR, program VARCHAR, month DATE);
-- event_time and event_id order the full-state events of an entity (time first, ties by id);
-- erased and merged_into are kept whatever order their events come in (neither is ever undone).
CREATE TABLE IF NOT EXISTS volunteer (
    id UUID PRIMARY KEY, organization_id UUID, sex VARCHAR, date_of_birth DATE, residence_province VARCHAR,
    residence_district VARCHAR, merged_into UUID, erased BOOLEAN NOT NULL DEFAULT false, event_time TIMESTAMPTZ, event_id VARCHAR,
    key INTEGER NOT NULL DEFAULT nextval('volunteer_keys'));
CREATE TABLE IF NOT EXISTS organization (
    id UUID PRIMARY KEY, parent_id UUID, kind VARCHAR, national BOOLEAN, event_time TIMESTAMPTZ, event_id VARCHAR);
CREATE TABLE IF NOT EXISTS program (id UUID PRIMARY KEY, code VARCHAR);
CREATE TABLE IF NOT EXISTS project (
    id UUID PRIMARY KEY, program_id UUID, organization_id UUID, event_time TIMESTAMPTZ, event_id VARCHAR);
-- current = replaced_by IS NULL; `replaces` lets a replacement arriving first mark its predecessor later.
CREATE TABLE IF NOT EXISTS assessment (
    id UUID PRIMARY KEY, volunteer_id UUID, instrument VARCHAR, phase VARCHAR, taken_on DATE, scores JSON,
    total INTEGER, replaces UUID, replaced_by UUID);
-- Verified hours of each merge survivor per programme, project, type, focus area and organisation.
CREATE TABLE IF NOT EXISTS volunteer_summary (
    volunteer_key INTEGER, survivor_id UUID, program VARCHAR, project_id UUID, activity_type VARCHAR,
    focus_area VARCHAR, organization_id UUID, hours DOUBLE);
-- Per merge survivor and instrument with a current baseline and endline (the earliest baseline and the latest
-- endline, ties by id): their totals, the items scored in both, the endline's date, and the survivor's verified
-- hours and distinct (programme, project, type, focus area) of their verified activities, from the summary,
-- and each of those four's distinct values on its own (SKILL_LINKS).
CREATE TABLE IF NOT EXISTS skill_pair (
    volunteer_id UUID, instrument VARCHAR, baseline_total INTEGER, endline_total INTEGER, endline_on DATE,
    items STRUCT(item VARCHAR, b DOUBLE, e DOUBLE)[], hours DOUBLE,
    links STRUCT(program VARCHAR, project_id UUID, activity_type VARCHAR, focus_area VARCHAR)[],
    programs VARCHAR[], project_ids UUID[], activity_types VARCHAR[], focus_areas VARCHAR[]);
-- Skills by programme and hours band, whole: per instrument, programme (one of a pair's `programs`) and hours
-- band, the pairs' count and baseline and endline sums (item NULL), and per item scored in both the same over
-- the pairs that have it. Moved by the difference of the pairs a batch changes (projections.py).
CREATE TABLE IF NOT EXISTS skill_totals (
    instrument VARCHAR, program VARCHAR, hours_band VARCHAR, item VARCHAR, volunteers BIGINT,
    baseline DECIMAL(38, 6), endline DECIMAL(38, 6));
-- 'events': the time of the latest event applied; 'derived': the same as far as the derived tables (summary,
-- cells, totals, skill pairs) are brought up to the activity rows (`projections.catch_up`).
CREATE TABLE IF NOT EXISTS store_state (name VARCHAR PRIMARY KEY, as_of TIMESTAMPTZ);
-- What the live consumer's transactions changed that the derived tables do not hold yet, each transaction a
-- generation: an activity row inserted (`stored` false) or about to change (`stored` true: the row as it was, so
-- as the derived tables hold it, the first time in its generation), and the merge survivors whose skill pairs
-- must be made again. `projections.catch_up` takes them in and deletes them.
CREATE SEQUENCE IF NOT EXISTS pending_generations;
CREATE TABLE IF NOT EXISTS pending_activity AS SELECT CAST(0 AS BIGINT) AS generation, true AS stored, a.* FROM activity a LIMIT 0;
CREATE TABLE IF NOT EXISTS pending_survivor (generation BIGINT, volunteer_id UUID);
-- Keyed by the event id alone (a store has one consumer): DuckDB looks up a one-column key in its
-- index, while a batch's lookup on (consumer, event_id) scanned the table (30 ms at 1 M events).
CREATE TABLE IF NOT EXISTS processed_events (
    event_id VARCHAR PRIMARY KEY, consumer VARCHAR NOT NULL, outcome VARCHAR NOT NULL DEFAULT 'applied');
-- The next offset to read of each partition, as far as the rebuild's bulk path has read.
CREATE TABLE IF NOT EXISTS consumed_offsets (
    topic VARCHAR, partition INTEGER, next_offset BIGINT NOT NULL, PRIMARY KEY (topic, partition));
{rollups}
CREATE OR REPLACE VIEW activity_facts AS SELECT a.*, a.survivor_id AS eff_volunteer_id FROM activity a;
CREATE OR REPLACE VIEW assessment_facts AS
    SELECT s.*, coalesce(named.merged_into, s.volunteer_id) AS eff_volunteer_id
    FROM assessment s LEFT JOIN volunteer named ON named.id = s.volunteer_id
    WHERE s.replaced_by IS NULL;
"""

# The sums a cell holds, from its `activity` rows. Hours in exact decimals (an activity's hours have at
# most two): a cell's sums are moved by differences, which in floating point would drift from the sums the
# activity rows give.
ROLLUP_SUMS = {
    "activities": "count(*)", "hours": "coalesce(sum(CAST(hours AS DECIMAL(38, 6))), 0)",
    "approved_hours": "coalesce(sum(CAST(approved_hours AS DECIMAL(38, 6))), 0)",
    **{column: f"coalesce(sum({column}), 0)" for column in ("ben_female", "ben_male", "ben_other", "ben_children")},
}


# A cell's volunteers are kept in chunks of the key space: a row per cell and chunk (`chunk` = key //
# CHUNK_BITS) holds the sums of the activities of that chunk's volunteers and a bitmap of CHUNK_BITS bits
# (bit key % CHUNK_BITS). A batch rewrites only the chunks its volunteers are in, 512 bytes each, where one
# dense bitmap per cell (design 3b as first built) rewrote 32 KiB per cell at 200 k volunteers: 100-145 ms
# per ~200 cells at 10 M activities, the consumer's batches falling behind 200 writes/s (bench/README.md,
# "Design 3b"); an update of ~170 chunk rows took 3 ms. Chunks with no volunteer are not stored, so a
# sparse cell costs less to read too. A group's distinct volunteers: per chunk the popcount of its cells'
# bitmaps OR-ed, summed over the chunks (a volunteer is in one chunk only).
CHUNK_BITS = 4096


@dataclass(frozen=True)
class Cells:
    """A table of cells (dimensions, month if `monthly`, status) built from the counted activity rows:
    per cell and chunk of volunteer keys (`CHUNK_BITS`), the sums and `volunteers`, a bitmap of the
    chunk's volunteers. What a dashboard reads: a few thousand rows, and the distinct volunteers of a
    group the sum over chunks of the popcount of its cells' bitmaps OR-ed."""

    dimensions: tuple[str, ...]
    monthly: bool

    @property
    def key(self) -> tuple[str, ...]:
        return (*self.dimensions, *(("month",) if self.monthly else ()), "status")

    @property
    def columns(self) -> tuple[str, ...]:
        """The table's columns, in order."""
        return (*self.key, "chunk", *ROLLUP_SUMS, "volunteers", "cell")

    def cell(self, alias: str) -> str:
        """`cell` of row `alias` (with the key's columns and `chunk`): the key and chunk as one text, each
        value length-prefixed (NULL as `-`), so that two rows share it exactly when they share the key."""
        parts = [f"coalesce(CAST(length(CAST({alias}.{c} AS VARCHAR)) AS VARCHAR) || ':' || CAST({alias}.{c} AS VARCHAR), '-')"
                 for c in (*self.key, "chunk")]
        return f"concat({', '.join(parts)})"


# The router (queries.rollup_for) takes the first that covers a question: the smaller first.
CELLS = {
    "cells_province_program": Cells(("province", "program"), monthly=False),
    "cells_residence": Cells(("residence_province", "sex", "age_band"), monthly=False),
    "cells_project": Cells(("organization_id", "project_id", "program"), monthly=False),
    "cells_type_month": Cells(("activity_type", "focus_area"), monthly=True),
    "cells_province_month": Cells(("province",), monthly=True),
    "cells_organization_month": Cells(("organization_id",), monthly=True),
}


@dataclass(frozen=True)
class Totals:
    """The answers of one shape of question, whole: per group of `dimensions` (as the analytics endpoints
    compute them: `queries.ACTIVITY_EXPRESSIONS`, or `RESIDENCE_EXPRESSIONS` if `residence`, over the
    columns of the table of cells `cells`), status and chunk of volunteer keys, the sums and the number of
    distinct volunteers (the popcount of the group's cells' bitmaps in that chunk OR-ed). Kept from the cells
    for the groups and chunks a batch touched: a batch of a few chunks reads only those chunks' cells of its
    groups (5 ms where a group's every chunk took 32 at 10 M activities). A question asking for exactly these
    groups (every dimension grouped, or fixed to one value by a filter; one status) sums a group's rows over
    its chunks and reads no bitmap: `queries.totals_for`."""

    cells: str
    dimensions: tuple[str, ...]
    residence: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.dimensions, "status", "chunk", *ROLLUP_SUMS, "volunteers")


# The dashboards and a few common shapes; the router takes the first that answers a question.
TOTALS = {
    "totals_overall": Totals("cells_province_program", ()),
    "totals_province_month": Totals("cells_province_month", ("province", "month")),
    "totals_residence": Totals("cells_residence", ("province", "sex", "age_band"), residence=True),
    "totals_type_quarter": Totals("cells_type_month", ("activity_type", "quarter")),
    "totals_province_program": Totals("cells_province_program", ("province", "program")),
    "totals_project": Totals("cells_project", ("organization", "project")),
    "totals_organization_year": Totals("cells_organization_month", ("organization", "year")),
}
# The grain a batch compares its volunteers' activity rows at, before and after: every dimension of a
# table of cells, the month, the status and the survivor's key.
ROLLUP_GRAIN = (*sorted({column for cells in CELLS.values() for column in cells.dimensions}), "month", "status",
                "volunteer_key")
_COLUMN_TYPES = {"organization_id": "UUID", "project_id": "UUID", "month": "DATE", "volunteer_key": "INTEGER", "chunk": "INTEGER",
                 "activities": "BIGINT", "hours": "DECIMAL(38, 6)", "approved_hours": "DECIMAL(38, 6)",
                 "volunteers": "BIT", "organization": "UUID", "project": "UUID", "quarter": "DATE", "year": "BIGINT"}


def _table_ddl(name: str, columns: tuple[str, ...], types: dict[str, str] | None = None) -> str:
    types = {**_COLUMN_TYPES, **(types or {})}
    typed = ", ".join(f"{c} {types.get(c, 'BIGINT' if c.startswith('ben_') else 'VARCHAR')}" for c in columns)
    return f"CREATE TABLE IF NOT EXISTS {name} ({typed});"


DDL = DDL.replace("{rollups}", "\n".join(
    [_table_ddl(name, cells.columns) for name, cells in CELLS.items()]
    # A batch finds the rows of the cells it moves in this index, without reading every row's bitmap.
    + [f"CREATE INDEX IF NOT EXISTS {name}_cell ON {name} (cell);" for name in CELLS]
    + [_table_ddl(name, totals.columns, {"volunteers": "BIGINT"}) for name, totals in TOTALS.items()]
    # The per-volunteer membership tables the cells were first kept from (2026-12-02): no longer read.
    + [f"DROP TABLE IF EXISTS {name};" for name in ("rollup_place", "rollup_residence", "rollup_type", "rollup_project")]))

# The tables a rebuild must reproduce (processed_events and consumed_offsets differ by design: ids and
# positions, not figures), each with the columns that depend on arrival order (the integer keys) left out.
FIGURE_TABLES = {
    "activity": "* EXCLUDE (volunteer_key)", "volunteer": "* EXCLUDE (key)", "organization": "*", "program": "*",
    "project": "*", "assessment": "*", "store_state": "*", "volunteer_summary": "* EXCLUDE (volunteer_key)",
    "skill_pair": "*", "skill_totals": "*",
    # A cell's chunks and bitmaps hold keys: its sums and number of volunteers over its chunks are the figures.
    **{name: (f"{', '.join(cells.key)}, {', '.join(f'sum({c})' for c in ROLLUP_SUMS)}, sum(bit_count(volunteers)) "
              f"FROM {name} GROUP BY {', '.join(cells.key)}") for name, cells in CELLS.items()},
    # Likewise a group's rows of totals: one per chunk.
    **{name: (f"{''.join(d + ', ' for d in totals.dimensions)}status, {', '.join(f'sum({c})' for c in ROLLUP_SUMS)}, "
              f"sum(volunteers) FROM {name} GROUP BY {''.join(d + ', ' for d in totals.dimensions)}status")
       for name, totals in TOTALS.items()},
}


# Each activity dimension skills can be cut by: the `skill_pair` list of its distinct values, and the
# summary column they come from.
SKILL_LINKS = {"program": ("programs", "program"), "project": ("project_ids", "project_id"),
               "activity_type": ("activity_types", "activity_type"), "focus_area": ("focus_areas", "focus_area")}


class StoreOutdated(Exception):
    """The store file was written by an earlier version of the schema: rebuild it from the log."""


def current_file(configured: str) -> str:
    """The file serving as the store named `configured`: a rebuild done while the service ran leaves
    its new file beside it and names it in `<configured>.current` (renaming a DuckDB file while it is
    open would orphan its write-ahead log)."""
    pointer = Path(configured + ".current")
    if configured != MEMORY and pointer.exists():
        return str(Path(configured).parent / pointer.read_text().strip())
    return configured


def point_to(configured: str, actual: str) -> None:
    """Make `actual` the file of the store named `configured` (atomically: a crash leaves one or the other)."""
    pointer = Path(configured + ".current")
    temporary = pointer.with_name(pointer.name + ".tmp")
    temporary.write_text(Path(actual).name)
    os.replace(temporary, pointer)


# The live service's store gives way to the answers (`AnalyticsStore(serving=True)`): DuckDB runs each
# statement on its calling thread only (no pool of its own, whose threads would run the consumer's scans at
# the answers' priority), and the consumer's batches run in a thread of their own at this lower CPU priority
# (a nice value), so that on a machine of few cores a batch's scans of the activity rows take the cores the
# answers leave rather than the reverse. A rebuild's store keeps DuckDB's default (a thread per core).
WRITER_NICENESS = 10
# The derived tables' upkeep (`projections.Upkeep`) gives way to the consumer's writes as well: a submission
# is counted once the consumer's transaction commits; the cells follow.
UPKEEP_NICENESS = 15


def lower_priority(niceness: int = WRITER_NICENESS) -> None:
    """This thread at the nice value `niceness` (or its own, if lower already)."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, max(os.getpriority(os.PRIO_PROCESS, thread), niceness))
    except (AttributeError, OSError):  # not Linux, or not allowed: the same priority as the rest
        pass


class AnalyticsStore:
    """The DuckDB database of one analytics replica: its writer connection and readers' cursors."""

    def __init__(self, path: str | Path, serving: bool = False):
        self.path = str(path)
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.serving = serving
        self._writer = ThreadPoolExecutor(1, "analytics-writer", initializer=lower_priority) if serving else None
        self._conn = self._connect(self.path)
        self._refuse_outdated()
        reshaped = self._drop_outdated_rollups()
        before = self._tables()
        unpaired = before and not {"skill_pair", "skill_totals"} <= before
        reshaped = reshaped or bool(before and not set(TOTALS) <= before)
        self._conn.execute(DDL)
        self._write_lock = threading.Lock()
        self._aside_lock = threading.Lock()
        from services.analytics.projections import derive_whole  # it imports this module
        if reshaped or unpaired:
            # Rollups of an earlier shape, tables of totals or skills it did not have: every derived table computed
            # from the rows.
            self.write(derive_whole)
        elif before and "pending_activity" not in before:
            # A store made before the upkeep was apart: its derived tables were kept in the consumer's transactions.
            self.write(lambda conn: conn.execute(
                "INSERT INTO store_state SELECT 'derived', as_of FROM store_state WHERE name = 'events' ON CONFLICT DO NOTHING"))

    def _connect(self, path: str) -> duckdb.DuckDBPyConnection:
        conn = duckdb.connect(path)
        conn.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        if self.serving:
            conn.execute("SET threads = 1")
        return conn

    def close(self) -> None:
        self._conn.close()
        if self._writer is not None:
            self._writer.shutdown(wait=False)

    def _tables(self) -> set[str]:
        return {name for (name,) in self._conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}

    def _refuse_outdated(self) -> None:
        """An activity table without the denormalised columns cannot be filled in place (its rows'
        attributes would have to come from events already consumed): the store must be rebuilt."""
        columns = {row[0] for row in self._conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'activity'").fetchall()}
        if columns and "month" not in columns:
            self._conn.close()
            raise StoreOutdated(f"{self.path} predates the activity rows' month and the rollups: run "
                                "`python -m services.analytics.rebuild` with the service stopped")

    def _drop_outdated_rollups(self) -> bool:
        """Tables of cells of an earlier shape (one dense bitmap per cell, no `chunk`; no indexed `cell`) and of
        totals of an earlier shape (no `chunk`) are dropped, to be made again and computed from the activity
        rows; whether there were any."""
        old = [name for (name,) in self._conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE (table_name LIKE 'cells_%' AND table_name NOT IN "
            "(SELECT table_name FROM information_schema.columns WHERE column_name = 'cell')) OR (table_name LIKE 'totals_%' "
            "AND table_name NOT IN (SELECT table_name FROM information_schema.columns WHERE column_name = 'chunk'))").fetchall()]
        for name in old:
            self._conn.execute(f"DROP TABLE {name}")
        return bool(old)

    # ---- writing --------------------------------------------------------------------------------
    def write(self, work: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """Run `work` in one transaction of the writer connection: committed if it returns, rolled
        back if it raises. Blocking: the consumer calls it through `asyncio.to_thread`."""
        with self._write_lock:
            self._conn.execute("BEGIN TRANSACTION")
            try:
                result = work(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def write_aside(self, work: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """Run `work` in one transaction of a cursor of its own, beside the writer's (DuckDB lets transactions
        write at once as long as they do not change the same rows): the derived tables' upkeep, which writes
        no table the consumer's transactions change but the rows of `pending_*` they have committed."""
        with self._aside_lock:
            cursor = self._conn.cursor()
            try:
                cursor.execute("BEGIN TRANSACTION")
                try:
                    result = work(cursor)
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
                cursor.execute("COMMIT")
                return result
            finally:
                cursor.close()

    async def write_soon(self, work: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """`write` in a worker thread (the writer's own, at a lower priority, when serving)."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, self.write, work)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold both write locks, the writer's and the upkeep's (taken in a thread: the event loop goes on)
        while the block runs."""
        await asyncio.to_thread(self._aside_lock.acquire)
        try:
            await asyncio.to_thread(self._write_lock.acquire)
            try:
                yield
            finally:
                self._write_lock.release()
        finally:
            self._aside_lock.release()

    def swap_locked(self, other: AnalyticsStore) -> str:
        """Serve from `other`'s database from now on (a rebuilt store), the write lock being held by the
        caller (`exclusive`); the old database is closed. Returns the old database's path."""
        old_conn, old_path = self._conn, self.path
        self._conn, self.path = other._conn, other.path
        other._conn, other.path = old_conn, old_path
        other.close()
        if self.serving:
            self._conn.execute("SET threads = 1")
        return old_path

    # ---- reading --------------------------------------------------------------------------------
    def query(self, sql: str, params: list | dict | None = None) -> list[tuple]:
        """Rows of `sql` on a cursor of its own (a consistent snapshot, concurrent with the writer)."""
        cursor = self._conn.cursor()
        try:
            return cursor.execute(sql, params or []).fetchall()
        finally:
            cursor.close()

    def query_keyed(self, build: Callable[[int | None], Any]) -> tuple[Any, list[tuple]]:
        """The statement `build(highest volunteer key)` makes (an object with `sql` and `params`) and its
        rows, the key read in the same snapshot: a bitmap of volunteers sized by it holds every key the
        statement can meet, whatever is written meanwhile."""
        cursor = self._conn.cursor()
        try:
            cursor.execute("BEGIN TRANSACTION")
            statement = build(cursor.execute("SELECT max(key) FROM volunteer").fetchone()[0])
            rows = cursor.execute(statement.sql, statement.params).fetchall()
            cursor.execute("COMMIT")
            return statement, rows
        finally:
            cursor.close()

    async def read_keyed(self, build: Callable[[int | None], Any]) -> tuple[Any, list[tuple]]:
        """`query_keyed` in a worker thread."""
        return await asyncio.to_thread(self.query_keyed, build)

    async def read(self, sql: str, params: list | dict | None = None) -> list[tuple]:
        """`query` in a worker thread, so the event loop serves other requests meanwhile."""
        return await asyncio.to_thread(self.query, sql, params)

    def as_of(self, state: str = "events") -> datetime | None:
        """The time of the latest event applied (`state` 'events'), or taken into the derived tables ('derived')."""
        rows = self.query("SELECT as_of FROM store_state WHERE name = $1", [state])
        return rows[0][0] if rows else None

    def contents(self) -> dict[str, list[tuple]]:
        """Every figure table's rows, sorted: what two stores built from the same log must share."""
        return {table: sorted(self.query(f"SELECT {columns}" if " FROM " in columns else f"SELECT {columns} FROM {table}"),
                              key=repr)
                for table, columns in FIGURE_TABLES.items()}


def get_store(request: Request) -> AnalyticsStore:
    return request.app.state.store


StoreDep = Annotated[AnalyticsStore, Depends(get_store)]
