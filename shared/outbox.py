"""Transactional outbox: events are rows written in the change's transaction, then relayed to Kafka.

The relay publishes rows in insertion order, marks only those the broker acknowledged, and retries
with a bounded exponential backoff while the broker is away, so nothing committed is ever lost. A
row may be published twice (a crash between the ack and the mark); consumers apply each event once.

Published rows are kept for VMC_OUTBOX_RETENTION_HOURS: when the broker lost its log (noticed by
`shared.broker.LogWatch`, with no one's signal) the relay re-creates its topics and publishes the
retained rows again, in order; consumers re-read and skip what they already applied.

On PostgreSQL the relay runs in a thread of its own, with an event loop, a database engine and a
producer of its own (`own_engine`): a service busy with requests had its relay's every step wait its
turn in the request loop and in the request pool's queue (at 90-135 writes/s, 0.7-1.1 batches a
second: the outbox row → broker ack leg p50 0.8-1.3 s, bench/README.md "Freshness"). A commit wakes it
across threads. On SQLite it stays in the service's loop, on the service's one connection (a second
connection writing would make the service's own transactions fail with SQLITE_BUSY_SNAPSHOT).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError
from sqlalchemy import BigInteger, Column, Integer, LargeBinary, delete, event, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel

from shared.broker import LogWatch, RelayState, ensure_topics, refusal
from shared.db import timestamp_field
from shared.events import CATALOGUE, CloudEvent, EncodedEvent
from shared.metrics import Metrics

log = logging.getLogger(__name__)


class OutboxRecord(SQLModel, table=True):
    __tablename__ = "outbox"

    seq: int | None = Field(
        default=None, sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    )
    event_id: str = Field(max_length=36, index=True)
    topic: str = Field(max_length=200)
    key: str = Field(max_length=200)
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = timestamp_field()
    published_at: datetime | None = timestamp_field(index=True, nullable=True, default_now=False)


TABLES = [OutboxRecord.__table__, RelayState.__table__]


def mark_written(session: AsyncSession) -> None:
    """Outbox rows were written in this transaction (by `add_event`, `add_events`, or the caller's own
    SQL): the relay is woken once it commits."""
    session.info["outbox_dirty"] = True


def add_event(session: AsyncSession, event_: CloudEvent) -> None:
    """Stage an event in the caller's transaction; it is published only if that transaction commits."""
    session.add(
        OutboxRecord(
            event_id=event_.id,
            topic=CATALOGUE[event_.type].topic,
            key=event_.subject,
            value=event_.to_bytes(),
            created_at=datetime.now(timezone.utc),
        )
    )
    mark_written(session)


# Below this many rows a COPY's own set-up costs more than the INSERT it replaces.
COPY_FROM = 20
_COLUMNS = ["event_id", "topic", "key", "value", "created_at"]


async def add_events(session: AsyncSession, events: Sequence[CloudEvent | EncodedEvent]) -> None:
    """Stage many events at once (imports, batches): COPY on PostgreSQL with asyncpg (an executemany of
    1000 outbox rows took ~30-40 ms, the COPY a few), one Core executemany elsewhere; no ORM objects."""
    if not events:
        return
    now = datetime.now(timezone.utc)
    records = [(e.id, CATALOGUE[e.type].topic, e.subject, e.value if isinstance(e, EncodedEvent) else e.to_bytes(), now)
               for e in events]
    connection = await session.connection()
    if len(records) >= COPY_FROM and connection.dialect.name == "postgresql" and connection.dialect.driver == "asyncpg":
        await session.flush()  # objects staged before these rows get their sequence numbers first
        driver = (await connection.get_raw_connection()).driver_connection
        await driver.copy_records_to_table(OutboxRecord.__tablename__, records=records, columns=_COLUMNS)
    else:
        await session.execute(insert(OutboxRecord.__table__), [dict(zip(_COLUMNS, r)) for r in records])
    mark_written(session)


REPUBLISHING = "republishing outbox after broker lost its log"


class OutboxRelay:
    """Background task publishing committed outbox rows; one per process; with several replicas on
    PostgreSQL one of them publishes at a time.

    Beside it a watch task looks at the cluster every `watch_interval` seconds (`LogWatch`): it
    creates missing topics, and a lost log makes the publishing loop re-publish the retained rows.

    `own_engine` (PostgreSQL): both run in a thread of their own, on an engine it makes there (the
    service's `maker` then only carries the commits' wake-up and `backlog`)."""

    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        producer_factory: Callable[[], AIOKafkaProducer],
        metrics: Metrics,
        watch: LogWatch | None = None,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        max_backoff: float = 5.0,
        linger: float = 0.0,
        retention: timedelta = timedelta(days=7),
        watch_interval: float = 2.0,
        deep_watch_interval: float = 15.0,
        flush_timeout: float = 5.0,
        own_engine: Callable[[], AsyncEngine] | None = None,
    ):
        self._maker = maker  # the service's: its commits wake the relay
        self._sessions = maker  # what the relay reads and marks with (the thread's own, with `own_engine`)
        self._own_engine = own_engine
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the relay's loop, once started
        self._closed: asyncio.Event | None = None  # ends the thread's loop
        self._producer_factory = producer_factory
        self._producer: AIOKafkaProducer | None = None
        self._metrics = metrics
        self._watch = watch
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._linger = linger
        self._retention = retention
        self._watch_interval = watch_interval
        self._deep_watch_interval = deep_watch_interval
        self._flush_timeout = flush_timeout
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._leader_conn = None
        self._watching = False  # the marks are loaded: this relay publishes and watches the log
        self._lost: str | None = None  # why the log is lost, until the loop starts re-publishing
        self._generation = 0  # re-publications so far
        self._backlog_counted_at = 0.0
        self._pruned_at: float | None = None  # monotonic time of the last pruning
        self.healthy = False
        self.problem: str | None = None  # why /ready says no (REPUBLISHING), None when fine
        self.refused: str | None = None  # the broker's refusal of the relay's last request, if it was one

        @event.listens_for(maker.kw["sync_session_class"], "after_commit")
        def _after_commit(session):
            # A released savepoint fires this too; the events are visible only at the outer commit.
            if not session.in_nested_transaction() and session.info.pop("outbox_dirty", False):
                self.wake()

    def wake(self) -> None:
        """Publish soon (from any thread: a commit in the service's loop wakes a relay in its own)."""
        loop = self._loop
        if loop is None or self._thread is None or threading.current_thread() is self._thread:
            self._wake.set()
        elif not self._wake.is_set():  # a wake already pending is enough (and costs no syscall)
            loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        if self._watch is None:  # only a relay that never publishes (a test of its wake-up) has none
            raise ValueError("a publishing outbox relay needs a LogWatch")
        if self._own_engine is None:
            self._loop = asyncio.get_running_loop()
            self._start_tasks()
            return
        started = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._own_loop(started),), name="outbox-relay",
                                        daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the outbox relay's thread did not start")

    def _start_tasks(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        self._watch_task = asyncio.create_task(self._watch_log(), name="outbox-log-watch")

    async def _own_loop(self, started: threading.Event) -> None:
        """The thread's life: an engine of its own, the relay's tasks, until `stop` closes it."""
        engine = self._own_engine()
        try:
            self._sessions = async_sessionmaker(engine, expire_on_commit=False)
            self._wake, self._stopping, self._closed = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._start_tasks()
            started.set()
            await self._closed.wait()
        finally:
            await engine.dispose()

    async def stop(self) -> None:
        """Publish what is pending (for `flush_timeout` seconds at most), then close."""
        if self._thread is None:
            await self._stop_here()
            return
        if not self._thread.is_alive():
            return
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._stop_here(), self._loop))
        finally:
            self._loop.call_soon_threadsafe(self._closed.set)
            await asyncio.to_thread(self._thread.join, 10)

    async def _stop_here(self) -> None:
        """`stop`, in the relay's loop."""
        self._stopping.set()
        self._wake.set()
        if self._watch_task:
            self._watch_task.cancel()
        if self._task:
            try:
                await asyncio.wait_for(self._task, self._flush_timeout)
            except asyncio.TimeoutError:
                log.warning("outbox relay stopped before its backlog was published (the next start publishes it)")
            except Exception:  # noqa: BLE001 - its failure is logged; stopping goes on
                log.warning("outbox relay failed while stopping", exc_info=True)
        # Each step bounded: a client closing on a broker that does not answer must not hold the stop.
        await _within(self._close_producer(), 5, "closing the producer")
        await self._drop_leadership()
        if self._watch_task:
            await _within(asyncio.gather(self._watch_task, return_exceptions=True), 5, "closing the log watch")

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if self._producer is None:
                    await self._start_producer()
                if not await self._lead():
                    self._watching = False
                    await asyncio.sleep(self._poll_interval * 4)  # standby replica
                    continue
                await self._prepare()
                # Cleared before the read, not after it: a commit made while the batch is out wakes
                # the next one at once (it waited for the next commit or the poll interval).
                self._wake.clear()
                published = await self.publish_batch()
                self.healthy = True
                self.refused = None
                failures = 0
                if published < self._batch_size:
                    await self._idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database away: back off and retry, never give up
                self.healthy = False
                refused = refusal(exc, "the outbox relay's producer", starting=self._producer is None)
                if refused and refused != self.refused:
                    log.error(refused)
                self.refused = refused
                failures += 1
                delay = min(self._max_backoff, 0.1 * 2 ** min(failures, 10))
                log.warning("outbox relay failed, retrying", extra={"error": repr(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
        await self._flush()

    async def _idle(self) -> None:
        """Wait for a commit (or the poll interval), then linger for the commits right behind it."""
        if self._stopping.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        except asyncio.TimeoutError:
            return
        if self._linger:
            # Woken by a commit: wait a moment for the commits right behind it, so that one batch
            # (one query, one produce request, one update) carries them all (a stop cuts it short).
            try:
                await asyncio.wait_for(self._stopping.wait(), self._linger)
            except asyncio.TimeoutError:
                pass

    async def _flush(self) -> None:
        """On stop: publish until nothing is pending (bounded by `stop`'s deadline)."""
        if self._producer is None or not self._watching:
            return
        try:
            while await self.publish_batch() == self._batch_size:
                pass
            async with self._sessions() as session:
                await self._watch.save(session, force=True)
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - the broker is away: the rows wait for the next start
            log.warning("outbox relay could not flush on stop", extra={"error": repr(exc)})

    async def _prepare(self) -> None:
        """Before a batch: know the marks (once leading), re-publish after a lost log, prune old rows."""
        if not self._watching:
            async with self._sessions() as session:
                await self._watch.load(session)
            self._lost = await self._watch.lost()  # a loss while this service was stopped
            self._watching = True
        if self._lost:
            await self._republish(self._lost)
        if self._pruned_at is None or time.monotonic() - self._pruned_at > 600:
            await self._prune()

    async def _watch_log(self) -> None:
        """Look at the cluster every `watch_interval` s; the high watermarks also after the broker was
        unreachable and every `deep_watch_interval` s (a fetch costs more than the metadata)."""
        deep_at, was_away = 0.0, False
        while True:
            await asyncio.sleep(self._watch_interval)
            try:
                deep = self._watching and (was_away or time.monotonic() - deep_at > self._deep_watch_interval)
                generation = self._generation
                lost = await self._watch.lost(deep=deep)
                was_away = False
                if deep:
                    deep_at = time.monotonic()
                # Marks of the relay's own: not of before a re-publication that started meanwhile.
                if lost and self._watching and generation == self._generation:
                    self._lost = lost
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker is away: /ready says so; look again
                was_away = True
                log.debug("cluster not readable", extra={"error": repr(exc)})

    async def _republish(self, reason: str) -> None:
        """The broker lost its log: publish every retained row again, in order, and start the marks over.
        The topics first: Tansu acknowledges a record sent to a topic it does not have, and drops it."""
        await ensure_topics(self._watch.settings, self._watch.topics)
        async with self._sessions() as session:
            result = await session.execute(update(OutboxRecord).values(published_at=None))
            await self._watch.forget(session)
            await session.commit()
        self._lost = None
        self._generation += 1
        self.problem = REPUBLISHING
        self._metrics.outbox_republished.labels(self._metrics.service).inc(result.rowcount)
        log.warning("the broker lost its log: republishing retained outbox",
                    extra={"reason": reason, "events": result.rowcount})

    async def _prune(self) -> None:
        """Delete the rows published longer ago than the retention (a bounded outbox), a slice at a time."""
        self._pruned_at = time.monotonic()
        before = datetime.now(timezone.utc) - self._retention
        while True:
            async with self._sessions() as session:
                old = select(OutboxRecord.seq).where(OutboxRecord.published_at < before).limit(5_000)
                result = await session.execute(delete(OutboxRecord).where(OutboxRecord.seq.in_(old.scalar_subquery())))
                await session.commit()
            if result.rowcount:
                log.info("outbox rows past their retention deleted", extra={"events": result.rowcount})
            if result.rowcount < 5_000:
                return

    async def _start_producer(self) -> None:
        producer = self._producer_factory()
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)  # a producer whose start failed cannot start again
            raise
        self._producer = producer

    async def _close_producer(self) -> None:
        if self._producer is not None:
            await _stop_quietly(self._producer)
            self._producer = None

    async def publish_batch(self) -> int:
        """Publish the oldest unpublished rows; returns how many were read.

        No database connection is held while waiting for the broker (with SQLite's single
        connection that would stall every write of the service while the broker is away). An
        acknowledgement at or below an offset acknowledged before means the broker lost its log."""
        async with self._sessions() as session:
            query = select(OutboxRecord.seq, OutboxRecord.topic, OutboxRecord.key, OutboxRecord.value)
            query = query.where(OutboxRecord.published_at.is_(None)).order_by(OutboxRecord.seq).limit(self._batch_size)
            rows = (await session.execute(query)).all()
            if not rows:
                await self._update_backlog(session, empty=True)
                self.problem = None
                return 0
        assert self._producer is not None
        try:
            futures = [await self._producer.send(topic, value=value, key=key.encode()) for _, topic, key, value in rows]
        except UnknownTopicOrPartitionError:
            # The producer waited for a topic the cluster does not have (nothing creates a topic by
            # naming it): one of a row written by an earlier version, or lost with the broker's log.
            await ensure_topics(self._watch.settings, sorted({topic for _, topic, _, _ in rows}))
            raise
        done: list[int] = []
        error: BaseException | None = None
        for (seq, *_), future in zip(rows, futures):
            try:
                acked = await future
            except Exception as exc:  # noqa: BLE001 - keep the acknowledged prefix, retry the rest
                error = exc
                break
            if not self._watch.acknowledged(TopicPartition(acked.topic, acked.partition), acked.offset):
                self._lost = f"{acked.topic}/{acked.partition} acknowledged offset {acked.offset}, not above an earlier one"
            done.append(seq)
        async with self._sessions() as session:
            if done:
                now = datetime.now(timezone.utc)
                await session.execute(update(OutboxRecord).where(OutboxRecord.seq.in_(done)).values(published_at=now))
                await self._watch.save(session)
                await session.commit()
                self._metrics.outbox_published.labels(self._metrics.service).inc(len(done))
            await self._update_backlog(session)
        if error is not None:
            raise error
        return len(rows)

    async def _lead(self) -> bool:
        """On PostgreSQL only one replica's relay publishes (keeps per-aggregate order across
        replicas): it holds a session advisory lock on a connection of its own."""
        engine = self._sessions.kw["bind"]
        if engine.dialect.name != "postgresql":
            return True
        if self._leader_conn is not None:
            try:
                await self._leader_conn.execute(text("SELECT 1"))
                return True
            except Exception:  # noqa: BLE001 - lost the connection, and with it the lock
                await self._drop_leadership()
        conn = await engine.connect()
        got = (await conn.execute(text("SELECT pg_try_advisory_lock(727272)"))).scalar_one()
        await conn.commit()
        if not got:
            await conn.close()
            return False
        self._leader_conn = conn
        log.info("outbox relay is the publishing replica")
        return True

    async def _drop_leadership(self) -> None:
        if self._leader_conn is not None:
            try:
                # Closed, not returned to the pool: a pooled connection would keep the session's
                # advisory lock, and no other relay could lead until it happened to be reused.
                await self._leader_conn.invalidate()
                await self._leader_conn.close()
            except Exception:  # noqa: BLE001 - the connection is already gone
                log.debug("leader connection close failed", exc_info=True)
            self._leader_conn = None

    async def _update_backlog(self, session: AsyncSession, empty: bool = False) -> None:
        """Refresh the backlog gauge: free when nothing is pending, else counted at most once a second
        (a count per published batch was a query per write at low rates)."""
        gauge = self._metrics.outbox_backlog.labels(self._metrics.service)
        if empty:
            gauge.set(0)
            return
        now = time.monotonic()
        if now - self._backlog_counted_at < 1.0:
            return
        self._backlog_counted_at = now
        gauge.set((await session.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))).scalar_one())

    async def backlog(self) -> int:
        async with self._maker() as session:
            return (await session.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))).scalar_one()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception:  # noqa: BLE001 - it never started, or lost its broker: nothing to release
        log.debug("producer stop failed", exc_info=True)


async def _within(step: Awaitable, seconds: float, what: str) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except asyncio.TimeoutError:
        log.warning("outbox relay stop: step abandoned after its deadline", extra={"step": what, "after_s": seconds})
