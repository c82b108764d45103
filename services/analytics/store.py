"""The analytics read store: one DuckDB database per replica, built only from the event log.

One writer, many readers. The service holds one DuckDB connection; every batch of events is applied
under `_write_lock` in one DuckDB transaction together with the ids of the events it applied
(`processed_events`), so an event redelivered after a crash finds its id and is skipped. Queries read
through their own cursor (a connection to the same database with its own snapshot), in a worker
thread (`read`): a query never waits for a write, a write never waits for a query, and neither
blocks the event loop.

Merges are resolved at query time, in the `activity_facts` view: an activity counts for
`coalesce(merged_into, volunteer_id)` of the volunteer it names, so an activity that arrives after the
merge (or names the duplicate in an older revision) still counts once, for the survivor. Chains (A
merged into B, later B into C) are flattened when a merge is applied, in any order. The activities
service also re-points the duplicate's activities (`vmc.activity.reassigned`, a new revision), so the
view's coalesce matters only until those events arrive.

Attributes of a volunteer the store has not heard of yet (an activity before its registration) are
NULL: the activity counts in hours, and in the "unknown" group of sex and age band.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import duckdb
from fastapi import Depends, Request

MEMORY = ":memory:"

DDL = """
CREATE TABLE IF NOT EXISTS activity (
    id UUID PRIMARY KEY, revision INTEGER NOT NULL, volunteer_id UUID, project_id UUID, program_id UUID,
    organization_id UUID, activity_type VARCHAR, focus_area VARCHAR, date DATE, hours DOUBLE,
    approved_hours DOUBLE, status VARCHAR, location_code VARCHAR, province VARCHAR, district VARCHAR,
    ben_female INTEGER, ben_male INTEGER, ben_other INTEGER, ben_children INTEGER);
-- event_time and event_id order the full-state events of an entity (time first, ties by id);
-- erased and merged_into are kept whatever order their events come in (neither is ever undone).
CREATE TABLE IF NOT EXISTS volunteer (
    id UUID PRIMARY KEY, organization_id UUID, sex VARCHAR, date_of_birth DATE, residence_province VARCHAR,
    merged_into UUID, erased BOOLEAN NOT NULL DEFAULT false, event_time TIMESTAMPTZ, event_id VARCHAR);
CREATE TABLE IF NOT EXISTS organization (
    id UUID PRIMARY KEY, parent_id UUID, kind VARCHAR, national BOOLEAN, event_time TIMESTAMPTZ, event_id VARCHAR);
CREATE TABLE IF NOT EXISTS program (id UUID PRIMARY KEY, code VARCHAR);
CREATE TABLE IF NOT EXISTS project (
    id UUID PRIMARY KEY, program_id UUID, organization_id UUID, event_time TIMESTAMPTZ, event_id VARCHAR);
-- current = replaced_by IS NULL; `replaces` lets a replacement arriving first mark its predecessor later.
CREATE TABLE IF NOT EXISTS assessment (
    id UUID PRIMARY KEY, volunteer_id UUID, instrument VARCHAR, phase VARCHAR, taken_on DATE, scores JSON,
    total INTEGER, replaces UUID, replaced_by UUID);
CREATE TABLE IF NOT EXISTS store_state (name VARCHAR PRIMARY KEY, as_of TIMESTAMPTZ);
-- Keyed by the event id alone (a store has one consumer): DuckDB looks up a one-column key in its
-- index, while a batch's lookup on (consumer, event_id) scanned the table (30 ms at 1 M events).
CREATE TABLE IF NOT EXISTS processed_events (
    event_id VARCHAR PRIMARY KEY, consumer VARCHAR NOT NULL, outcome VARCHAR NOT NULL DEFAULT 'applied');
CREATE OR REPLACE VIEW activity_facts AS
    SELECT a.*, coalesce(named.merged_into, a.volunteer_id) AS eff_volunteer_id,
           v.sex, v.date_of_birth, v.residence_province, p.code AS program
    FROM activity a
    LEFT JOIN volunteer named ON named.id = a.volunteer_id
    LEFT JOIN volunteer v ON v.id = coalesce(named.merged_into, a.volunteer_id)
    LEFT JOIN program p ON p.id = a.program_id;
CREATE OR REPLACE VIEW assessment_facts AS
    SELECT s.*, coalesce(named.merged_into, s.volunteer_id) AS eff_volunteer_id
    FROM assessment s LEFT JOIN volunteer named ON named.id = s.volunteer_id
    WHERE s.replaced_by IS NULL;
"""

# The tables a rebuild must reproduce (processed_events differ by design: ids, not figures).
FIGURE_TABLES = ("activity", "volunteer", "organization", "program", "project", "assessment", "store_state")


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


class AnalyticsStore:
    """The DuckDB database of one analytics replica: its writer connection and readers' cursors."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = duckdb.connect(self.path)
        self._conn.execute(DDL)
        self._write_lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

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

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the write lock (taken in a thread: the event loop goes on) while the block runs."""
        await asyncio.to_thread(self._write_lock.acquire)
        try:
            yield
        finally:
            self._write_lock.release()

    def swap_locked(self, other: AnalyticsStore) -> str:
        """Serve from `other`'s database from now on (a rebuilt store), the write lock being held by the
        caller (`exclusive`); the old database is closed. Returns the old database's path."""
        old_conn, old_path = self._conn, self.path
        self._conn, self.path = other._conn, other.path
        other._conn, other.path = old_conn, old_path
        other.close()
        return old_path

    # ---- reading --------------------------------------------------------------------------------
    def query(self, sql: str, params: list | dict | None = None) -> list[tuple]:
        """Rows of `sql` on a cursor of its own (a consistent snapshot, concurrent with the writer)."""
        cursor = self._conn.cursor()
        try:
            return cursor.execute(sql, params or []).fetchall()
        finally:
            cursor.close()

    async def read(self, sql: str, params: list | dict | None = None) -> list[tuple]:
        """`query` in a worker thread, so the event loop serves other requests meanwhile."""
        return await asyncio.to_thread(self.query, sql, params)

    def as_of(self) -> datetime | None:
        rows = self.query("SELECT as_of FROM store_state WHERE name = 'events'")
        return rows[0][0] if rows else None

    def contents(self) -> dict[str, list[tuple]]:
        """Every figure table's rows, sorted: what two stores built from the same log must share."""
        return {table: sorted(self.query(f"SELECT * FROM {table}"), key=repr) for table in FIGURE_TABLES}


def get_store(request: Request) -> AnalyticsStore:
    return request.app.state.store


StoreDep = Annotated[AnalyticsStore, Depends(get_store)]
