"""Rebuild the read store from the log: replay both topics from the start into a fresh store, then swap it in.

Two ways to run it, both `python -m services.analytics.rebuild`:
- with the service stopped (the default): a fresh store file is built next to the live one and
  replaces it; the service, started again, resumes its consumer group, and the events it finds already
  recorded in the new store are skipped;
- with the service running (`--url http://analytics:8003`): the service itself builds the new store
  beside the one it serves, then, holding the store's write lock (the live consumer waits, queries go
  on), reads what arrived meanwhile and swaps the new store in. The command prints its progress.

The bulk path pays no per-event idempotence cost: activity events (nearly all of a log) go to DuckDB as
the messages are, and it decodes and checks them in a few statements per batch (`ActivityRows`), keeping
their rows aside; once the log is read, each activity's highest revision is stored in one statement
(`settle`), with its volunteer's columns as they then stand; the others are noted in `Changes` as the live consumer notes them (newest state per entity, projections.py). A
batch of `BATCH_EVENTS` is written while the next is read, with the next offset of each partition
(`consumed_offsets`) in the same transaction. Activity event ids are not recorded (every projection is
idempotent: store.py), those of the few other events are, as the live consumer would. The summary for
skills and the dashboards' rollups are computed once, at the end, too. An offline rebuild then commits the
offsets to the service's consumer group, so the service resumes where the rebuild stopped instead of
reading the log again.

Where the log ends: Tansu answers ListOffsets(LATEST) wrongly (measured.md), so the end of each
partition is the high watermark that fetch responses carry, not `end_offsets()`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from pydantic import ValidationError

from services.analytics.projections import (
    ACTIVITY_COLUMNS, DENORMALISED, HANDLERS, Changes, activity_changed, derive_whole, note, record_processed,
)
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import MEMORY, AnalyticsStore, StoreOutdated, current_file, point_to
from shared.caller import Caller, CallerContext, encode_caller
from shared.errors import NotFound, ProblemError
from shared.events import ACTIVITIES_TOPIC, REGISTRY_TOPIC, MalformedEvent, UnknownEventType, parse_event

TOPICS = [REGISTRY_TOPIC, ACTIVITIES_TOPIC]
CONSUMER = "analytics"  # the live consumer's name: the ids recorded here are the ones it skips
BATCH_EVENTS = 50_000
SERVICE_KEY_PREFIX = "service:"


@dataclass
class Progress:
    """How far a replay is: events read, per partition the next offset and the end seen so far."""

    started: float = field(default_factory=time.monotonic)
    events: int = 0
    skipped: int = 0  # not events (they were dead-lettered live)
    positions: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)
    state: str = "replaying"
    error: str | None = None
    note: str | None = None

    @property
    def rate(self) -> float:
        return self.events / max(1e-9, time.monotonic() - self.started)

    def as_dict(self) -> dict:
        return {"state": self.state, "events": self.events, "skipped": self.skipped,
                "events_per_s": round(self.rate), "seconds": round(time.monotonic() - self.started, 1),
                "positions": dict(self.positions), "ends": dict(self.ends), "error": self.error, "note": self.note}


def describe(progress: dict) -> str:
    """One line of progress: events, rate, and each partition's offset against its end."""
    offsets = ", ".join(f"{p} {o}/{progress['ends'].get(p, '?')}" for p, o in sorted(progress["positions"].items()))
    return (f"{progress['state']}: {progress['events']:,} events, {progress['events_per_s']:,} events/s, "
            f"{progress['seconds']} s ({offsets})" + (f" error: {progress['error']}" if progress["error"] else "")
            + (f" ({progress['note']})" if progress.get("note") else ""))


ACTIVITY_TYPES = frozenset(t for t, handler in HANDLERS.items() if handler is activity_changed)
# How an activity event's envelope starts as the catalogue serialises it (CloudEvent.to_bytes): such a
# message takes the bulk path; any other goes through the models, as the live consumer does.
ACTIVITY_MARK = b'"type":"vmc.activity.'
# The envelope and ActivityChanged as DuckDB decodes them: a value that does not fit its type becomes
# NULL, and `_VALID` then refuses the event, as the models would have.
_ACTIVITY_JSON = orjson.dumps({
    "specversion": "VARCHAR", "id": "VARCHAR", "type": "VARCHAR", "time": "TIMESTAMPTZ", "data": {
        "id": "UUID", "revision": "INTEGER", "volunteer_id": "UUID", "project_id": "UUID", "program_id": "UUID",
        "organization_id": "UUID", "activity_type": "VARCHAR", "focus_area": "VARCHAR", "date": "DATE",
        "hours": "DOUBLE", "approved_hours": "DOUBLE", "status": "VARCHAR", "location_code": "VARCHAR",
        "version": "INTEGER",
        "beneficiaries": {"female": "INTEGER", "male": "INTEGER", "other": "INTEGER", "children": "INTEGER"},
    },
}).decode()
_VALID = " AND ".join([
    "e.specversion = '1.0'", "e.id IS NOT NULL", "e.time IS NOT NULL",
    "e.type IN (" + ", ".join(f"'{t}'" for t in sorted(ACTIVITY_TYPES)) + ")",
    *(f"e.data.{c} IS NOT NULL" for c in ("id", "revision", "volunteer_id", "project_id", "program_id",
                                          "organization_id", "activity_type", "focus_area", "date", "hours",
                                          "status", "location_code", "version", "beneficiaries")),
    "e.data.status IN ('submitted', 'verified', 'rejected', 'voided')",
    *(f"coalesce(e.data.beneficiaries.{k}, 0) >= 0" for k in ("female", "male", "other", "children")),
])


class ActivityRows:
    """The bulk path of activity events (nearly all of a log): the messages handed to DuckDB as they
    are, decoded and checked there in a few statements per batch and kept aside until `settle`, no Python
    object per event (decoding into the models and passing Python lists took 4 of every 5 seconds of a rebuild)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, raw: bytes) -> None:
        self.messages.append(raw.decode(errors="replace"))

    def flush(self, conn: duckdb.DuckDBPyConnection) -> int:
        """Decode and check the batch's activity events and append the valid ones' rows to `replayed_activity`
        (`settle` stores each activity's highest revision at the end), in the caller's transaction; returns
        the events refused (recorded as dead letters, as the live consumer does)."""
        if not self.messages:
            return 0
        conn.execute(f"""CREATE OR REPLACE TEMP TABLE replayed AS
            SELECT e, coalesce({_VALID}, false) AS valid
            FROM (SELECT TRY(from_json(j, '{_ACTIVITY_JSON}')) AS e FROM (SELECT unnest($1::VARCHAR[]) AS j))""",
                     [self.messages])
        conn.execute(f"""CREATE TEMP TABLE IF NOT EXISTS replayed_activity AS
            SELECT {REPLAYED_COLUMNS} FROM replayed LIMIT 0""")
        conn.execute(f"INSERT INTO replayed_activity SELECT {REPLAYED_COLUMNS} FROM replayed WHERE valid")
        conn.execute("""INSERT INTO store_state SELECT 'events', max(e.time) FROM replayed WHERE valid
            HAVING max(e.time) IS NOT NULL
            ON CONFLICT (name) DO UPDATE SET as_of = greatest(store_state.as_of, excluded.as_of)""")
        # Only the refused are recorded (as the live consumer records a dead letter): re-applying an
        # activity event is harmless, and the offsets say where the live consumer resumes.
        conn.execute(f"""INSERT INTO processed_events (consumer, event_id, outcome)
            SELECT DISTINCT '{CONSUMER}', e.id, 'dead_letter' FROM replayed WHERE NOT valid AND e.id IS NOT NULL
            ON CONFLICT DO NOTHING""")
        refused = conn.execute("SELECT count(*) FROM replayed WHERE NOT valid").fetchone()[0]
        conn.execute("DROP TABLE replayed")
        return refused


# An activity event's columns of `activity` as `ActivityRows.flush` keeps them (the denormalised ones come
# in `settle`).
_REPLAYED = {**{c: f"e.data.{c}" for c in ACTIVITY_COLUMNS},
             "province": "e.data.location_code[1:2]",
             "district": "CASE WHEN length(e.data.location_code) >= 4 THEN e.data.location_code[1:4] END",
             **{f"ben_{k}": f"coalesce(e.data.beneficiaries.{k}, 0)" for k in ("female", "male", "other", "children")}}
REPLAYED_COLUMNS = ", ".join(f"{e} AS {c}" for c, e in _REPLAYED.items())


def settle(conn: duckdb.DuckDBPyConnection) -> None:
    """Store the replayed activities, each at its highest revision, with its volunteer's columns as they
    stand once the whole log is read (a merge, a correction of a date of birth or a programme's code
    read after the activity is already in them); every volunteer named gets a row. One statement at the
    end instead of an upsert per batch: DuckDB's conflict check on the growing primary key cost 42 s of a
    10 M-activity rebuild's 134 s of writing, the whole insert at the end 15 s. Rows already stored (the
    rare activity event not in the catalogue's serialisation, which takes the models' path) are replaced
    only by a higher revision."""
    if not conn.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = 'replayed_activity'"
                        ).fetchone()[0]:
        return
    conn.execute("INSERT INTO volunteer (id) SELECT DISTINCT volunteer_id FROM replayed_activity ON CONFLICT DO NOTHING")
    columns = ", ".join([*ACTIVITY_COLUMNS, *DENORMALISED])
    stored = conn.execute("SELECT count(*) FROM (SELECT 1 FROM activity LIMIT 1)").fetchone()[0]
    conflict = (f""" ON CONFLICT (id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in [*ACTIVITY_COLUMNS[1:], *DENORMALISED])}
            WHERE excluded.revision > activity.revision""" if stored else "")
    conn.execute(f"""INSERT INTO activity ({columns})
        SELECT a.*, {", ".join(DENORMALISED.values())} FROM (
            SELECT {", ".join(ACTIVITY_COLUMNS)} FROM replayed_activity
            QUALIFY row_number() OVER (PARTITION BY id ORDER BY revision DESC) = 1) a
        JOIN volunteer named ON named.id = a.volunteer_id
        JOIN volunteer s ON s.id = coalesce(named.merged_into, named.id)
        LEFT JOIN program pg ON pg.id = a.program_id{conflict}""")
    conn.execute("DROP TABLE replayed_activity")


class Replay:
    """Reads the topics from their first offsets and writes what they say into `store`."""

    def __init__(self, settings: AnalyticsSettings, store: AnalyticsStore, progress: Progress | None = None,
                 batch_events: int = BATCH_EVENTS, topics: list[str] = TOPICS):
        self.settings = settings
        self.topics = topics
        self.store = store
        self.progress = progress or Progress()
        self.batch_events = batch_events
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    async def start(self) -> None:
        # No group: the replay commits nothing and disturbs no live consumer.
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                          group_id=None, max_partition_fetch_bytes=8 * 1024 * 1024,
                                          fetch_max_bytes=64 * 1024 * 1024, request_timeout_ms=30_000)
        await self._consumer.start()
        known = await self._consumer.topics()
        self._partitions = [TopicPartition(t, p) for t in self.topics if t in known
                            for p in sorted(self._consumer.partitions_for_topic(t) or ())]
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def run(self, write: Callable[[Batch], int], on_progress: Callable[[Progress], None] | None = None,
                  every: float = 1.0) -> None:
        """Read until every partition is at its high watermark; `write(batch)` (blocking, run in a
        worker thread, returning the events it refused) stores each batch while the next one is read."""
        assert self._consumer is not None
        pending: asyncio.Future | None = None
        batch = Batch()
        shown = time.monotonic()
        rounds = 0
        while True:
            rounds += 1
            batches = await self._consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, messages in batches.items():
                for message in messages:
                    self.progress.skipped += not batch.add(message.value)
                self.progress.events += len(messages)
                batch.offsets[(tp.topic, tp.partition)] = messages[-1].offset + 1
            if len(batch) >= self.batch_events:
                if pending is not None:
                    self.progress.skipped += await pending
                pending = asyncio.ensure_future(asyncio.to_thread(write, batch))
                batch = Batch()
            caught_up = await self._observe()
            if on_progress and time.monotonic() - shown >= every:
                on_progress(self.progress)
                shown = time.monotonic()
            # Two rounds at least: the ends then come from a fetch sent after this call began (in the
            # catch-up, after the live consumer's last write), not from one answered before it.
            if caught_up and rounds >= 2:
                break
        if pending is not None:
            self.progress.skipped += await pending
        self.progress.skipped += await asyncio.to_thread(write, batch)

    async def _observe(self) -> bool:
        """Note each partition's position and end; whether every one has reached its end."""
        assert self._consumer is not None
        done = True
        for tp in self._partitions:
            name = f"{tp.topic}/{tp.partition}"
            position = await self._consumer.position(tp)
            end = self._consumer.highwater(tp)
            self.progress.positions[name] = position
            if end is None:
                done = False
            else:
                self.progress.ends[name] = end
                done = done and position >= end
        return done


class Batch:
    """Replayed events waiting to be written: activities on the bulk path, the rest as the live path notes them."""

    def __init__(self) -> None:
        self.activities = ActivityRows()
        self.changes = Changes()
        self.ids: list[str] = []
        self.offsets: dict[tuple[str, int], int] = {}  # (topic, partition) → the next offset to read

    def __len__(self) -> int:
        return len(self.activities) + len(self.changes)

    def add(self, raw: bytes | None) -> bool:
        """Take one message; False if it is not an event the live consumer would have applied (an
        activity event is checked later, by `ActivityRows.flush`)."""
        if raw is not None and ACTIVITY_MARK in raw:
            self.activities.add(raw)
            return True
        try:
            event = parse_event(raw)
            payload = event.payload()
        except (MalformedEvent, ValidationError, UnknownEventType):
            return False
        note(self.changes, event, payload)
        self.ids.append(event.id)
        return True


def bulk_writer(store: AnalyticsStore) -> Callable[[Batch], int]:
    """Writes a replayed batch into `store` in one transaction; returns the activity events refused."""
    def write(batch: Batch) -> int:
        def work(conn) -> int:
            batch.changes.flush(conn, live=False)
            refused = batch.activities.flush(conn)
            record_processed(conn, CONSUMER, batch.ids)
            record_offsets(conn, batch.offsets)
            return refused
        return store.write(work)
    return write


def record_offsets(conn: duckdb.DuckDBPyConnection, offsets: dict[tuple[str, int], int]) -> None:
    if offsets:
        conn.execute(
            """INSERT INTO consumed_offsets SELECT unnest($1::VARCHAR[]), unnest($2::INTEGER[]), unnest($3::BIGINT[])
               ON CONFLICT (topic, partition) DO UPDATE SET next_offset = greatest(next_offset, excluded.next_offset)""",
            [[t for t, _ in offsets], [p for _, p in offsets], list(offsets.values())],
        )


def stored_offsets(store: AnalyticsStore) -> dict[TopicPartition, int]:
    return {TopicPartition(t, p): o for t, p, o in store.query("SELECT topic, partition, next_offset FROM consumed_offsets")}


async def finish(store: AnalyticsStore) -> None:
    """What the bulk path leaves to the end: the activity rows (`settle`), the skills summary, the dashboards' rollups (cells and totals)
    and the skill pairs, from every activity and assessment at once."""
    def work(conn: duckdb.DuckDBPyConnection) -> None:
        settle(conn)
        derive_whole(conn)
    await asyncio.to_thread(store.write, work)


async def hand_over_offsets(settings: AnalyticsSettings, offsets: dict[TopicPartition, int],
                            timeout: float = 60) -> str | None:
    """Commit the rebuilt store's offsets to the service's consumer group (the service is stopped), so
    that it resumes there: without this it would re-read the whole log and apply each event again (157 s
    at 1 M events). Committed as a member of the group, once it holds every partition: Tansu refuses a
    commit from outside the group (generation -1) once the group has had members. If another member
    holds some (a service still running under the group), nothing is committed: the service re-reads
    the log, slower but right (re-applying is harmless). Returns why, if not handed over."""
    if not offsets:
        return None
    consumer = AIOKafkaConsumer(*sorted({tp.topic for tp in offsets}), bootstrap_servers=settings.kafka_bootstrap,
                                group_id=settings.consumer_group, enable_auto_commit=False,
                                session_timeout_ms=settings.kafka_session_timeout_ms, request_timeout_ms=30_000)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while set(offsets) - consumer.assignment():
            if time.monotonic() > deadline:
                return (f"offsets not handed over: group {settings.consumer_group} gave this rebuild "
                        f"{len(consumer.assignment())} of {len(offsets)} partitions; the service will re-read the log")
            await asyncio.sleep(0.1)  # the group's join runs in the consumer's background task
        await consumer.commit(offsets)
        return None
    except KafkaError as exc:
        return f"offsets not handed over to group {settings.consumer_group} ({exc!r}): the service will re-read the log"
    finally:
        await consumer.stop()


def fresh_path(live: str) -> str:
    return live if live == MEMORY else f"{live}.rebuild-{uuid.uuid4().hex[:8]}"


class StoreInUse(Exception):
    """The live store is open in a running service."""


async def rebuild_offline(settings: AnalyticsSettings, on_progress: Callable[[Progress], None],
                          topics: list[str] = TOPICS) -> Progress:
    """Build a fresh store from the log and put it in the live store's place (the service is stopped)."""
    configured = settings.resolved_store_path()
    live = current_file(configured)
    if live != MEMORY and Path(live).exists():
        try:
            AnalyticsStore(live).close()  # fails while a running service holds the file
        except duckdb.IOException as exc:
            raise StoreInUse(f"{live} is open in a running analytics service: stop it, or pass --url") from exc
        except StoreOutdated:
            pass  # it opened, so no service holds it; an old schema is what a rebuild replaces
    new = AnalyticsStore(fresh_path(configured))
    replay = Replay(settings, new, topics=topics)
    try:
        await replay.start()
        await replay.run(bulk_writer(new), on_progress)
        await finish(new)
        offsets = stored_offsets(new)
    finally:
        await replay.stop()
        new.close()
    if configured != MEMORY:
        # The new file is closed (checkpointed, no log of its own); an old log must not replay onto it.
        Path(configured + ".wal").unlink(missing_ok=True)
        os.replace(new.path, configured)
        Path(configured + ".current").unlink(missing_ok=True)
        if live != configured:
            Path(live).unlink(missing_ok=True)
            Path(live + ".wal").unlink(missing_ok=True)
    # Only once the new store is in place: offsets handed over first would, after a crash, let the
    # service resume past events its old store never saw.
    replay.progress.note = await hand_over_offsets(settings, offsets)
    replay.progress.state = "done"
    return replay.progress


async def rebuild_live(settings: AnalyticsSettings, live: AnalyticsStore, progress: Progress) -> None:
    """Inside the running service: build a new store beside `live`, catch up under its write lock, swap."""
    configured = settings.resolved_store_path()
    new = AnalyticsStore(fresh_path(configured))
    replay = Replay(settings, new, progress)
    try:
        await replay.start()
        await replay.run(bulk_writer(new))
        progress.state = "catching up"
        # The live consumer waits from here (its writes queue on the lock): what it applied so far is
        # below the ends this last pass reads up to, and what it applies next goes to the new store.
        async with live.exclusive():
            await replay.run(bulk_writer(new))
            await finish(new)
            old_path = live.swap_locked(new)
            if old_path != MEMORY:
                point_to(configured, live.path)
        if old_path != MEMORY:
            Path(old_path).unlink(missing_ok=True)
            Path(old_path + ".wal").unlink(missing_ok=True)
        progress.state = "done"
    except Exception as exc:
        progress.state, progress.error = "failed", repr(exc)
        new.close()
        raise
    finally:
        await replay.stop()


# ---- the running service's side: POST starts a rebuild, GET reports its progress ------------------
router = APIRouter(prefix="/internal/rebuild", tags=["internal"], include_in_schema=False)


def _only_services(caller: CallerContext) -> None:
    # Not public: the gateway routes no /internal path; only a context signed by a holder of the
    # internal secret as a service is answered, anyone else gets the 404 of a missing route.
    if not caller.key_id.startswith(SERVICE_KEY_PREFIX):
        raise NotFound("route")


@router.post("", status_code=202)
async def start_rebuild(request: Request, caller: Caller) -> dict:
    _only_services(caller)
    state = request.app.state
    running = getattr(state, "rebuild", None)
    if running is not None and running[0].state in ("replaying", "catching up"):
        raise ProblemError(409, "a rebuild is already running", slug="rebuild-running")
    progress = Progress()
    task = asyncio.create_task(rebuild_live(state.settings, state.store, progress))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # the error is in `progress`
    state.rebuild = (progress, task)
    return progress.as_dict()


@router.get("")
async def rebuild_progress(request: Request, caller: Caller) -> dict:
    _only_services(caller)
    running = getattr(request.app.state, "rebuild", None)
    if running is None:
        raise NotFound("rebuild")
    return running[0].as_dict()


async def rebuild_through(url: str, settings: AnalyticsSettings, out=sys.stdout) -> dict:
    """Ask the running service at `url` to rebuild, printing its progress until it is done."""
    caller = CallerContext(key_id="service:rebuild", organization_id=uuid.UUID(int=0))
    path = "/api/v1/internal/rebuild"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        started = await client.post(path, headers=encode_caller(caller, settings.internal_secret))
        started.raise_for_status()
        while True:
            body = (await client.get(path, headers=encode_caller(caller, settings.internal_secret))).json()
            print(describe(body), file=out, flush=True)
            if body["state"] in ("done", "failed"):
                return body
            await asyncio.sleep(1.0)  # a progress display's pace, not a synchronisation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.analytics.rebuild",
                                     description="Rebuild the analytics read store from the topics.")
    parser.add_argument("--url", help="the running analytics service (e.g. http://127.0.0.1:8003): it rebuilds and "
                                      "swaps in place; without it the service must be stopped")
    args = parser.parse_args(argv)
    settings = AnalyticsSettings()
    if args.url:
        body = asyncio.run(rebuild_through(args.url, settings))
        return 0 if body["state"] == "done" else 1
    try:
        progress = asyncio.run(rebuild_offline(settings, lambda p: print(describe(p.as_dict()), flush=True)))
    except StoreInUse as exc:
        print(exc, file=sys.stderr)
        return 1
    print(describe(progress.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
