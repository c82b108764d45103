"""Transactional outbox: events are rows written in the change's transaction, then relayed to Kafka.

The relay publishes rows in insertion order, marks only those the broker acknowledged, and retries
with a bounded exponential backoff while the broker is away, so nothing committed is ever lost. A
row may be published twice (a crash between the ack and the mark); consumers apply each event once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from aiokafka import AIOKafkaProducer
from sqlalchemy import BigInteger, Column, Integer, LargeBinary, event, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel

from shared.broker import RelayState, is_new_epoch
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
    session.info["outbox_dirty"] = True


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
    session.info["outbox_dirty"] = True


class OutboxRelay:
    """Background task publishing committed outbox rows; one per process; with several replicas on
    PostgreSQL one of them publishes at a time."""

    def __init__(
        self,
        maker: async_sessionmaker[AsyncSession],
        producer_factory: Callable[[], AIOKafkaProducer],
        metrics: Metrics,
        *,
        broker_epoch: str = "",
        batch_size: int = 500,
        poll_interval: float = 0.5,
        max_backoff: float = 5.0,
        linger: float = 0.0,
    ):
        self._maker = maker
        self._producer_factory = producer_factory
        self._producer: AIOKafkaProducer | None = None
        self._metrics = metrics
        self._epoch = broker_epoch
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._linger = linger
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._leader_conn = None
        self._backlog_counted_at = 0.0
        self.healthy = False

        @event.listens_for(maker.kw["sync_session_class"], "after_commit")
        def _after_commit(session):
            # A released savepoint fires this too; the events are visible only at the outer commit.
            if not session.in_nested_transaction() and session.info.pop("outbox_dirty", False):
                self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._close_producer()
        await self._drop_leadership()

    async def _run(self) -> None:
        failures = 0
        started = False
        while True:
            try:
                if not started:
                    self._producer = self._producer_factory()
                    await self._producer.start()
                    started = True
                    await self._apply_epoch()
                if not await self._lead():
                    await asyncio.sleep(self._poll_interval * 4)  # standby replica
                    continue
                published = await self.publish_batch()
                self.healthy = True
                failures = 0
                if published < self._batch_size:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval)
                    except asyncio.TimeoutError:
                        continue
                    if self._linger:
                        # Woken by a commit: wait a moment for the commits right behind it, so that
                        # one batch (one query, one produce request, one update) carries them all.
                        await asyncio.sleep(self._linger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database away: back off and retry, never give up
                self.healthy = False
                failures += 1
                delay = min(self._max_backoff, 0.1 * 2 ** min(failures, 10))
                log.warning("outbox relay failed, retrying", extra={"error": repr(exc), "retry_in_s": delay})
                if not started:
                    await self._close_producer()  # a producer whose start failed cannot start again
                await asyncio.sleep(delay)

    async def _close_producer(self) -> None:
        if self._producer is not None:
            try:
                await self._producer.stop()
            except Exception:  # noqa: BLE001 - it never started; nothing to release
                log.debug("producer stop failed", exc_info=True)
            self._producer = None

    async def _apply_epoch(self) -> None:
        """After the embedded broker started empty (a new epoch: shared/broker.py), publish the retained
        outbox again."""
        if not self._epoch:
            return
        async with self._maker() as session:
            if not await is_new_epoch(session, self._epoch):
                return
            result = await session.execute(update(OutboxRecord).values(published_at=None))
            await session.commit()
            log.info("new broker epoch: republishing retained outbox", extra={"events": result.rowcount})

    async def publish_batch(self) -> int:
        """Publish the oldest unpublished rows; returns how many were read.

        No database connection is held while waiting for the broker (with SQLite's single
        connection that would stall every write of the service while the broker is away)."""
        async with self._maker() as session:
            query = select(OutboxRecord.seq, OutboxRecord.topic, OutboxRecord.key, OutboxRecord.value)
            query = query.where(OutboxRecord.published_at.is_(None)).order_by(OutboxRecord.seq).limit(self._batch_size)
            rows = (await session.execute(query)).all()
            if not rows:
                await self._update_backlog(session, empty=True)
                return 0
        assert self._producer is not None
        futures = [await self._producer.send(topic, value=value, key=key.encode()) for _, topic, key, value in rows]
        done: list[int] = []
        error: BaseException | None = None
        for (seq, *_), future in zip(rows, futures):
            try:
                await future
            except Exception as exc:  # noqa: BLE001 - keep the acknowledged prefix, retry the rest
                error = exc
                break
            done.append(seq)
        async with self._maker() as session:
            if done:
                now = datetime.now(timezone.utc)
                await session.execute(update(OutboxRecord).where(OutboxRecord.seq.in_(done)).values(published_at=now))
                await session.commit()
                self._metrics.outbox_published.labels(self._metrics.service).inc(len(done))
            await self._update_backlog(session)
        if error is not None:
            raise error
        return len(rows)

    async def _lead(self) -> bool:
        """On PostgreSQL only one replica's relay publishes (keeps per-aggregate order across
        replicas): it holds a session advisory lock on a connection of its own."""
        engine = self._maker.kw["bind"]
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

