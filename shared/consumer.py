"""Idempotent Kafka consumer runtime.

Each fetched batch (every partition's messages) is applied in one transaction together with a
record of the event ids it processed (a SQL database through `SessionBatches`, or any other store
through its own `BatchUnits`); offsets are committed only after that transaction commits. A redelivered event
(consumer killed before its offset commit, rebalance, outbox re-publish) finds its id recorded and
is skipped. A message that cannot be processed after bounded retries goes to the consumer's
dead-letter topic with the error (a malformed one, one of a type no catalogue lists, or one whose payload
its model refuses, at once), and the consumer moves on. A partition whose log ends below the
consumer's position (the broker lost its log) is read again from its start. A consumer left without
a partition assignment for longer than `join_timeout` (aiokafka's start waits for one with no deadline)
starts over with a new client, and says so in `problem` (/ready). `stop` finishes the batch in hand,
commits its offsets and leaves the group.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel

from shared.broker import Membership, PartitionCounts, refusal
from shared.db import timestamp_field
from shared.events import CATALOGUE, CloudEvent, MalformedEvent, Payload, UnknownEventType, dead_letter_topic, parse_event
from shared.metrics import Metrics
from shared.unit_of_work import unit_of_work

log = logging.getLogger(__name__)

# A handler writes through the session it is given and never commits: the runtime commits its work
# with the processed-event record (see `_apply`).
Handler = Callable[[AsyncSession, CloudEvent, Payload], Awaitable[None]]


class ProcessedEvent(SQLModel, table=True):
    __tablename__ = "processed_events"

    consumer: str = Field(primary_key=True, max_length=100)
    event_id: str = Field(primary_key=True, max_length=100)
    processed_at: datetime = timestamp_field()
    outcome: str = Field(default="applied", max_length=20)


TABLES = [ProcessedEvent.__table__]


# A commit this many seconds old makes the next batch of its partition ask whether the group still
# holds it (`EventConsumer._group_offset_lost`).
GROUP_CHECK_AFTER = 1.0
# Failures of the infrastructure, not of a message: never a reason to dead-letter.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, OSError, asyncio.TimeoutError)


class BatchUnits(Protocol):
    """Where a consumer applies its batches: each in one transaction that also records the ids of the
    events it applied, so a redelivered event is skipped (`SessionBatches` is the SQL database's)."""

    async def apply(self, consumer: str, events: list[tuple[CloudEvent, Payload | None]],
                    handlers: Mapping[str, Any]) -> tuple[int, int]:
        """Apply the events not recorded yet and record them, all or nothing: (applied, duplicates)."""

    async def record_dead_letter(self, consumer: str, event_id: str) -> None:
        """Record a dead-lettered event, so a replay does not dead-letter it a second time."""

    async def reachable(self) -> bool:
        """Whether the store answers (if not, a failure is the store's, not the message's)."""


def unseen(events: list[tuple[CloudEvent, Payload | None]], seen: set[str]) -> tuple[list[tuple[CloudEvent, Payload | None]], int]:
    """The events whose ids are neither recorded (`seen`) nor earlier in the batch, and how many were not."""
    fresh, ids = [], set(seen)
    for event, payload in events:
        if event.id not in ids:
            ids.add(event.id)
            fresh.append((event, payload))
    return fresh, len(events) - len(fresh)


class SessionBatches:
    """A consumer's batches applied through SQLAlchemy sessions, one unit of work per batch."""

    def __init__(self, maker: async_sessionmaker[AsyncSession]):
        self._maker = maker

    async def apply(self, consumer: str, events: list[tuple[CloudEvent, Payload | None]],
                    handlers: Mapping[str, Handler]) -> tuple[int, int]:
        # The batch is one unit of work: the handlers' writes and the processed-event records are
        # committed together, once, here; a handler that raises leaves neither.
        async with unit_of_work(self._maker) as session:
            ids = list({e.id for e, _ in events})
            seen = set(
                (
                    await session.execute(
                        select(ProcessedEvent.event_id).where(
                            ProcessedEvent.consumer == consumer, ProcessedEvent.event_id.in_(ids)
                        )
                    )
                ).scalars()
            )
            now = datetime.now(timezone.utc)
            fresh, skipped = unseen(events, seen)
            applied = 0
            for event, payload in fresh:
                handler = handlers.get(event.type)
                if handler is not None:
                    await handler(session, event, payload)
                    applied += 1
                session.add(ProcessedEvent(consumer=consumer, event_id=event.id, processed_at=now))
        return applied, skipped

    async def record_dead_letter(self, consumer: str, event_id: str) -> None:
        async with unit_of_work(self._maker) as session:
            if await session.get(ProcessedEvent, (consumer, event_id)) is None:
                session.add(
                    ProcessedEvent(
                        consumer=consumer, event_id=event_id, processed_at=datetime.now(timezone.utc), outcome="dead_letter"
                    )
                )

    async def reachable(self) -> bool:
        try:
            async with self._maker() as session:
                await session.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure means the database is away
            return False


class _Poison(Exception):
    """A message that will never succeed (not an envelope, or its payload breaks the schema)."""


class EventConsumer:
    def __init__(
        self,
        name: str,
        topics: list[str],
        handlers: Mapping[str, Any],
        units: async_sessionmaker[AsyncSession] | BatchUnits,
        consumer_factory: Callable[[str, list[str]], AIOKafkaConsumer],
        producer_factory: Callable[[], AIOKafkaProducer],
        metrics: Metrics,
        *,
        max_retries: int = 3,
        retry_delay: float = 0.2,
        group_id: str | None = None,
        stop_timeout: float = 10.0,
        join_timeout: float = 30.0,
        every_partition: bool = False,
    ):
        self.name = name
        # The Kafka group; `name` by default. Replicas that each keep a whole read model of their own
        # need a group each (with one group, each replica would get only some partitions).
        self.group_id = group_id or name
        self.topics = topics
        self.handlers = handlers
        # A session maker applies batches through SQL sessions; a store of another kind brings its own.
        self._units: BatchUnits = SessionBatches(units) if isinstance(units, async_sessionmaker) else units
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._metrics = metrics
        self._max_retries = max_retries
        self._retry_delay = retry_delay
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._stop_timeout = stop_timeout
        # Without an assignment for this long, a client is taken for stuck (shared.broker.join_deadline).
        self._join_timeout = join_timeout
        self._refused: str | None = None  # the broker's refusal of this consumer's last request, if it was one
        # A group of its own (a replica keeping a whole read model): it must hold every partition of its
        # topics. Since when it has not (a stale assignment, or another member in its group), and why.
        self._every_partition = every_partition
        self._partial_since: float | None = None
        self._partial: str | None = None
        self._client_started = time.monotonic()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # Offsets read before a rebalance are not committed after it; each assignment noted (Tansu).
        self._membership = Membership(on_assigned=self._assigned)
        self._partitions = PartitionCounts(topics)  # Tansu: a topic re-created or created since needs a new member
        self._committed_at: dict[TopicPartition, float] = {}  # this client's last commit, monotonic time
        self.last_event_time: datetime | None = None
        self.healthy = False
        # What /ready reports beside the metrics: messages behind per "topic/partition", dead letters.
        self.lag: dict[str, int] = {}
        self.dead_lettered = 0
        metrics.dead_letters.labels(name)  # exported as 0 from the start, so alerts see the series

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        """Let the batch in hand finish and its offsets be committed (for `stop_timeout` seconds at
        most), then close: aiokafka's consumer leaves the group, so its partitions move at once."""
        self._stopping = True
        if self._task:
            try:
                await asyncio.wait_for(self._task, self._stop_timeout)
            except asyncio.TimeoutError:
                log.warning("consumer stopped in the middle of a batch (its events are delivered again)",
                            extra={"consumer": self.name})
            except Exception:  # noqa: BLE001 - its failure is logged; stopping goes on
                log.warning("consumer failed while stopping", extra={"consumer": self.name}, exc_info=True)
        await self._close()

    async def _close(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    # Bounded: a broker that does not answer must not hold the service's stop.
                    await asyncio.wait_for(client.stop(), 5)
                except Exception:  # noqa: BLE001 - closing a client that lost its broker
                    log.debug("client stop failed", exc_info=True)
        self._consumer = self._producer = None

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                self._producer = self._producer_factory()
                await self._producer.start()
                self._consumer = self._consumer_factory(self.group_id, self.topics)
                self._committed_at = {}
                self._partitions = PartitionCounts(self.topics)
                self._client_started = time.monotonic()
                self._membership.joining()
                self._consumer.subscribe(self.topics, listener=self._membership)
                await self._start_client(self._consumer)
                failures = 0
                await self._consume(self._consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.healthy = False
                refused = refusal(exc, f"consumer {self.name}", starting=self._consumer is None)
                if refused and refused != self._refused:
                    log.error(refused)
                self._refused = refused
                failures += 1
                delay = min(5.0, 0.2 * 2 ** min(failures, 10))
                log.warning("consumer failed, restarting", extra={"consumer": self.name, "error": repr(exc), "retry_in_s": delay})
                await self._close()
                if not self._stopping:
                    await asyncio.sleep(delay)

    @property
    def unassigned_for(self) -> float:
        """Seconds this consumer has been without a partition assignment (0 once it has one)."""
        return self._membership.unassigned_for()

    @property
    def problem(self) -> str | None:
        """Why this consumer is not doing its work (for /ready), None when it is: the broker refused its
        last request, or it has been without partitions for longer than a join may take."""
        if self._refused:
            return self._refused
        if self._partial:
            return self._partial
        waited = self.unassigned_for
        if waited > self._join_timeout:
            return f"consumer {self.name} has had no partitions assigned for {waited:.0f} s"
        return None

    async def _start_client(self, consumer: AIOKafkaConsumer) -> None:
        """Start the client, which joins the group: aiokafka's `start` waits for the assignment with no
        deadline of its own, so a join that never completed would hold the consumer for good (none was
        seen in our runs of a broker killed mid-join: aiokafka re-joined within seconds; nothing in it
        bounds the wait though); after `join_timeout` the consumer starts over as a new member."""
        try:
            await asyncio.wait_for(consumer.start(), self._join_timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"no partitions assigned within {self._join_timeout:g} s of joining: "
                               "starting over as a new member") from None

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        if self._consumer is not None:
            self._partitions.assigned(self._consumer)
        log.info("partitions assigned", extra={"consumer": self.name,
                                               "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in assigned),
                                               "topic_partitions": self._partitions.known})

    def _check_assignment(self) -> None:
        """The same deadline for a rejoin (a rebalance begun, no assignment since), counted from this
        client's start at the earliest."""
        since = self._membership.joining_since
        if since is not None and time.monotonic() - max(since, self._client_started) > self._join_timeout:
            raise RuntimeError(f"no partitions assigned within {self._join_timeout:g} s of a rebalance: "
                               "starting over as a new member")

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            self._check_assignment()
            generation = self._membership.generation
            self.healthy = True
            self._refused = None
            kept = {tp: messages for tp, messages in batches.items() if not await self._group_offset_lost(consumer, tp)}
            if kept:
                # Every partition's messages in one transaction (order kept within each partition, the
                # only order there is): a store transaction per partition made each event wait for the
                # other partitions' transactions of its fetch (analytics' freshness).
                await self._process([message for messages in kept.values() for message in messages])
                await self._commit(consumer, {tp: messages[-1].offset + 1 for tp, messages in kept.items()}, generation)
            for tp, messages in kept.items():
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag = max(0, highwater - (messages[-1].offset + 1))
                    self.lag[f"{tp.topic}/{tp.partition}"] = lag
                    self._metrics.consumer_lag.labels(self.name, tp.topic, tp.partition).set(lag)
            self._partitions.check(consumer)
            self._check_every_partition(consumer)
            await self._reread_lost_logs(consumer)

    def _check_every_partition(self, consumer: AIOKafkaConsumer) -> None:
        """A consumer whose group is its own holds every partition of its topics; one that has held fewer
        for longer than a join may take starts over as a new member (and /ready says so until it holds
        them all): whatever left it short, a stale assignment or a second member in its group (two
        analytics replicas given one group), it would otherwise report ready and miss events."""
        if not self._every_partition:
            return
        wanted = {TopicPartition(topic, p) for topic in self.topics for p in consumer.partitions_for_topic(topic) or ()}
        held = consumer.assignment()
        if wanted <= held:
            self._partial_since = self._partial = None
            return
        now = time.monotonic()
        if self._partial_since is None:
            self._partial_since = now
        elif now - self._partial_since > self._join_timeout:
            self._partial_since = None
            self._partial = (f"consumer {self.name} holds {len(wanted & held)} of the {len(wanted)} partitions of its "
                             f"topics, yet its group {self.group_id} should be its own: rejoining as a new member")
            log.error(self._partial)
            raise RuntimeError(self._partial)

    async def _group_offset_lost(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """Whether the group's committed offset of `tp` vanished since this client committed one (the
        broker lost its log, and with it the group's offsets): then the batch in hand is dropped and the
        partition read again from its start. Needed beside `_reread_lost_logs`: by the time this client
        fetches again the new log may already reach past its position, and reading on from there would
        skip as many new events. Asked only after a pause of `GROUP_CHECK_AFTER` seconds since the last
        commit (a broker's restart is such a pause): a steady stream pays nothing."""
        last = self._committed_at.get(tp)
        if last is None or time.monotonic() - last < GROUP_CHECK_AFTER:
            return False
        if await consumer.committed(tp) is not None:
            return False
        log.warning("the group's committed offset is gone: the broker lost its log; reading the partition again",
                    extra={"consumer": self.name, "partition": str(tp)})
        del self._committed_at[tp]
        consumer.seek(tp, 0)
        return True

    async def _reread_lost_logs(self, consumer: AIOKafkaConsumer) -> None:
        """A partition whose log ends below our position lost its log (offsets only grow otherwise):
        read it again from its start; what was applied before is skipped. Tansu answers a fetch past
        the end with nothing at all, not OffsetOutOfRange, so without this the consumer would wait
        there, skipping as many new events."""
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = await consumer.position(tp)
            if position > highwater:
                log.warning("partition log ends below the consumer's position: the broker lost it; reading it again",
                            extra={"consumer": self.name, "partition": str(tp), "position": position,
                                   "highwater": highwater})
                consumer.seek(tp, 0)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], generation: int) -> None:
        if generation != self._membership.generation:
            log.info("offset not committed: the group rebalanced since it was read", extra={"consumer": self.name})
            return
        commit = asyncio.ensure_future(consumer.commit(offsets))
        self._membership.pending = commit
        try:
            await commit
            now = time.monotonic()
            self._committed_at.update(dict.fromkeys(offsets, now))
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            log.info("offset commit abandoned: the group rebalanced", extra={"consumer": self.name, "partitions": str(list(offsets))})
        except CommitFailedError:
            # The partition moved to another member; it resumes from the last committed offset and
            # the processed-events record makes the overlap harmless.
            log.info("offset commit lost to a rebalance", extra={"consumer": self.name, "partitions": str(list(offsets))})
        finally:
            self._membership.pending = None

    async def _process(self, messages: list[ConsumerRecord]) -> None:
        """The fetched batch in one transaction; on any failure, one message at a time."""
        try:
            await self._apply(messages, raise_on_error=True)
        except Exception:  # noqa: BLE001 - isolate the culprit below
            for message in messages:
                await self._process_one(message)

    async def _process_one(self, message: ConsumerRecord) -> None:
        error: BaseException | None = None
        for attempt in range(self._max_retries):
            try:
                await self._apply([message], raise_on_error=True)
                return
            except _Poison as exc:
                error = exc
                break
            except Exception as exc:  # noqa: BLE001 - retried a bounded number of times, then dead-lettered
                if isinstance(exc, TRANSIENT) or not await self._database_reachable():
                    # The database (not the message) is at fault: stop without committing the offset;
                    # the consumer restarts with a backoff and the message is delivered again. A
                    # database refusing connections raises a plain DBAPIError, hence the probe.
                    raise
                error = exc
                await asyncio.sleep(self._retry_delay * (attempt + 1))
        await self._dead_letter(message, error)

    async def _database_reachable(self) -> bool:
        return await self._units.reachable()

    async def _apply(self, messages: list[ConsumerRecord], raise_on_error: bool) -> None:
        events: list[tuple[CloudEvent, Payload | None]] = []
        for message in messages:
            try:
                event = parse_event(message.value)
                if event.type not in CATALOGUE:  # not ours to skip: a bad producer, or a consumer too old for it
                    raise UnknownEventType(event.type)
                payload = event.payload() if event.type in self.handlers else None
            except (MalformedEvent, ValidationError, UnknownEventType) as exc:
                raise _Poison(str(exc)) from exc
            events.append((event, payload))
        applied, skipped = await self._units.apply(self.name, events, self.handlers)
        if events:
            self.last_event_time = max(e.time for e, _ in events)
        self._metrics.consumed.labels(self.name, "applied").inc(applied)
        self._metrics.consumed.labels(self.name, "duplicate").inc(skipped)

    async def _dead_letter(self, message: ConsumerRecord, error: BaseException | None) -> None:
        reason = repr(error) if error else "unknown"
        headers = [
            ("vmc-error", reason[:2000].encode()),
            ("vmc-consumer", self.name.encode()),
            ("vmc-original-topic", message.topic.encode()),
            ("vmc-original-partition", str(message.partition).encode()),
            ("vmc-original-offset", str(message.offset).encode()),
        ]
        value = orjson.dumps(
            {
                "consumer": self.name,
                "error": reason[:2000],
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "key": message.key.decode(errors="replace") if message.key else None,
                "value": message.value.decode(errors="replace") if message.value else None,
            }
        )
        assert self._producer is not None
        await self._producer.send_and_wait(dead_letter_topic(self.name), value=value, key=message.key, headers=headers)
        self._metrics.dead_letters.labels(self.name).inc()
        self.dead_lettered += 1
        log.error("message dead-lettered", extra={"consumer": self.name, "error": reason, "offset": message.offset})
        # Record a dead-lettered event so a replay does not dead-letter it a second time.
        try:
            event_id = parse_event(message.value).id
        except MalformedEvent:
            return
        await self._units.record_dead_letter(self.name, event_id)
