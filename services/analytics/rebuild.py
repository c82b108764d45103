"""Rebuild the read store from the log: replay both topics from the start into a fresh store, then swap it in.

Two ways to run it, both `python -m services.analytics.rebuild` (also `vmc analytics rebuild`):
- with the service stopped (the default): a fresh store file is built next to the live one and
  replaces it; the service, started again, resumes its consumer group, and the events it finds already
  recorded in the new store are skipped;
- with the service running (`--url http://analytics:8003`): the service itself builds the new store
  beside the one it serves, then, holding the store's write lock (the live consumer waits, queries go
  on), reads what arrived meanwhile and swaps the new store in. The command prints its progress.

The bulk path pays no per-event idempotence cost: events are decoded, noted in `Changes` (newest state
per entity in memory, see projections.py) and written every `BATCH_EVENTS` events, set-wise, while the
next batch is read; their ids are recorded so the live consumer skips them afterwards.

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
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import APIRouter, Request
from pydantic import ValidationError

from services.analytics.projections import Changes, note, record_processed
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import MEMORY, AnalyticsStore, current_file, point_to
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

    @property
    def rate(self) -> float:
        return self.events / max(1e-9, time.monotonic() - self.started)

    def as_dict(self) -> dict:
        return {"state": self.state, "events": self.events, "skipped": self.skipped,
                "events_per_s": round(self.rate), "seconds": round(time.monotonic() - self.started, 1),
                "positions": dict(self.positions), "ends": dict(self.ends), "error": self.error}


def describe(progress: dict) -> str:
    """One line of progress: events, rate, and each partition's offset against its end."""
    offsets = ", ".join(f"{p} {o}/{progress['ends'].get(p, '?')}" for p, o in sorted(progress["positions"].items()))
    return (f"{progress['state']}: {progress['events']:,} events, {progress['events_per_s']:,} events/s, "
            f"{progress['seconds']} s ({offsets})" + (f" error: {progress['error']}" if progress["error"] else ""))


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

    async def run(self, write: Callable[[Changes, list[str]], None], on_progress: Callable[[Progress], None] | None = None,
                  every: float = 1.0) -> None:
        """Read until every partition is at its high watermark; `write(changes, event_ids)` (blocking,
        run in a worker thread) stores each batch while the next one is read."""
        assert self._consumer is not None
        pending: asyncio.Future | None = None
        changes, ids = Changes(), []
        shown = time.monotonic()
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=20_000)
            for messages in batches.values():
                for message in messages:
                    try:
                        event = parse_event(message.value)
                        payload = event.payload()
                    except (MalformedEvent, ValidationError, UnknownEventType):
                        self.progress.skipped += 1
                        continue
                    note(changes, event, payload)
                    ids.append(event.id)
                self.progress.events += len(messages)
            if len(changes) >= self.batch_events:
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(asyncio.to_thread(write, changes, ids))
                changes, ids = Changes(), []
            caught_up = await self._observe()
            if on_progress and time.monotonic() - shown >= every:
                on_progress(self.progress)
                shown = time.monotonic()
            if caught_up and not batches:
                break
        if pending is not None:
            await pending
        await asyncio.to_thread(write, changes, ids)

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


def bulk_writer(store: AnalyticsStore) -> Callable[[Changes, list[str]], None]:
    """Writes a replayed batch into `store` (not yet serving anyone) in one transaction."""
    def write(changes: Changes, ids: list[str]) -> None:
        def work(conn) -> None:
            changes.flush(conn)
            record_processed(conn, CONSUMER, ids)
        store.write(work)
    return write


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
    new = AnalyticsStore(fresh_path(configured))
    replay = Replay(settings, new, topics=topics)
    try:
        await replay.start()
        await replay.run(bulk_writer(new), on_progress)
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
