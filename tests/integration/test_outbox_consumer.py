"""OutboxRelay and EventConsumer against a real broker and a real database, counting every effect.

The module has its own Tansu broker (some tests stop it) and its own database holding the platform
tables plus `test_effects`, where the test handlers append one row per application: a duplicate
application would show as an extra row, so "exactly once" is a count, not an absence of errors.
Each test uses its own topic and consumer group.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import SQLModel

from shared.broker import LogWatch, ensure_topics, make_consumer, make_producer
from shared.consumer import EventConsumer, Handler, ProcessedEvent
from shared.db import Migration, make_engine, make_sessionmaker, migrate
from shared.events import CloudEvent, ProgramCreated, dead_letter_topic, new_event
from shared.metrics import Metrics
from shared.outbox import OutboxRecord, OutboxRelay, add_event
from shared.service import shared_tables
from shared.settings import CommonSettings
from tests.conftest import eventually
from tests.harness import Broker, Databases, needs_stoppable_broker, new_workdir, remove_workdir, unique

EVENT_TYPE = "vmc.program.created"

effects_metadata = MetaData()
effects = Table(
    "test_effects",
    effects_metadata,
    # No unique constraint on purpose: applying an event twice must leave two rows to count.
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("consumer", String(100), nullable=False),
    Column("member", String(20), nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("code", String(50), nullable=False),
)


def _platform(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=shared_tables())


def _effects(conn: Connection) -> None:
    effects_metadata.create_all(conn)


MIGRATIONS = [Migration(1, "platform tables", _platform), Migration(2, "test effects", _effects)]


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_workdir():
    path = new_workdir()
    yield path
    remove_workdir(path)


@pytest.fixture(scope="module")
def own_broker(own_workdir):
    """A broker of this module only, so stopping it disturbs no other test."""
    broker = Broker(own_workdir)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def database_url(own_workdir):
    databases = Databases(own_workdir)
    yield databases.url("outbox_consumer")
    databases.drop()


@pytest.fixture(scope="module")
async def engine(database_url):
    engine = make_engine(database_url)
    await migrate(engine, MIGRATIONS)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def settings(own_broker) -> CommonSettings:
    # A short session: on Tansu each join waits about half of it, and a crashed member holds its
    # partitions until it expires (see CommonSettings.kafka_session_timeout_ms).
    return CommonSettings(
        kafka_bootstrap=own_broker.bootstrap, kafka_idempotence=own_broker.idempotence, kafka_session_timeout_ms=3_000
    )


@pytest.fixture
def stoppable(own_broker) -> Broker:
    """The broker, for tests marked `needs_stoppable_broker`."""
    return own_broker


class Rig:
    """One test's topic, sessions, metrics and the clients it starts (stopped at teardown)."""

    def __init__(self, settings: CommonSettings, engine: AsyncEngine):
        self.settings = settings
        self.topic = unique("vmc.test")
        self.group = unique("group")
        # A session class of its own per test: each relay hooks its wake-up onto it.
        self.maker: async_sessionmaker[AsyncSession] = make_sessionmaker(engine)
        self.metrics = Metrics(unique("svc"))
        self.running: list[EventConsumer | OutboxRelay] = []

    def consumer(self, member: str = "a", *, handler: Handler | None = None, cls: type[EventConsumer] = EventConsumer,
                 max_retries: int = 3) -> EventConsumer:
        consumer = cls(
            self.group,
            [self.topic],
            {EVENT_TYPE: handler or self.effect(member)},
            self.maker,
            lambda group, topics: make_consumer(self.settings, group, topics),
            lambda: make_producer(self.settings, f"{self.group}-{member}"),
            self.metrics,
            max_retries=max_retries,
            retry_delay=0.01,
        )
        self.running.append(consumer)
        return consumer

    def relay(self, max_backoff: float = 5.0, poll_interval: float = 0.1, linger: float = 0.0,
              watch_interval: float = 0.5, deep_watch_interval: float = 15.0) -> OutboxRelay:
        relay = OutboxRelay(
            self.maker, lambda: make_producer(self.settings, unique("relay")), self.metrics,
            LogWatch(self.settings, [self.topic, dead_letter_topic(self.group)]),
            poll_interval=poll_interval, max_backoff=max_backoff, linger=linger, watch_interval=watch_interval,
            deep_watch_interval=deep_watch_interval,
        )
        self.running.append(relay)
        return relay

    def effect(self, member: str) -> Handler:
        """A handler appending one effect row per application (not idempotent by itself)."""

        async def handler(session: AsyncSession, event: CloudEvent, payload: ProgramCreated) -> None:
            await session.execute(
                insert(effects).values(
                    consumer=self.group, member=member, event_id=event.id, subject=event.subject, code=payload.code
                )
            )

        return handler

    async def create_topic(self, partitions: int) -> None:
        """The test's topic and its consumer's dead-letter topic (a service creates both: no client
        lets the broker create a topic by naming it)."""
        await ensure_topics(self.settings, [self.topic, dead_letter_topic(self.group)], partitions)

    async def produce(self, values: list[tuple[bytes, bytes]]) -> None:
        """Publish (key, value) pairs in order and wait for every acknowledgement."""
        producer = make_producer(self.settings, unique("producer"))
        await producer.start()
        try:
            for key, value in values:
                await producer.send_and_wait(self.topic, value=value, key=key)
        finally:
            await producer.stop()

    async def stage(self, events: list[CloudEvent]) -> None:
        """Commit events through the outbox in one transaction, as a service's unit of work does."""
        async with self.maker() as session:
            for event in events:
                add_event(session, event)
            # add_event routes by event type; this test's rows go to the test's own topic instead.
            for row in session.new:
                if isinstance(row, OutboxRecord):
                    row.topic = self.topic
            await session.commit()

    async def effect_rows(self) -> list[dict]:
        async with self.maker() as session:
            result = await session.execute(select(effects).where(effects.c.consumer == self.group).order_by(effects.c.n))
            return [dict(r._mapping) for r in result]

    async def processed(self) -> Counter:
        """Outcomes recorded in processed_events for this test's consumer group."""
        async with self.maker() as session:
            result = await session.execute(
                select(ProcessedEvent.outcome, func.count())
                .where(ProcessedEvent.consumer == self.group)
                .group_by(ProcessedEvent.outcome)
            )
            return Counter(dict(result.all()))

    def consumed(self, outcome: str) -> int:
        value = self.metrics.registry.get_sample_value(
            "vmc_consumer_events_total", {"consumer": self.group, "outcome": outcome}
        )
        return int(value or 0)

    def published(self) -> int:
        value = self.metrics.registry.get_sample_value("vmc_outbox_published_total", {"service": self.metrics.service})
        return int(value or 0)

    def has_effects(self, count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(await self.effect_rows()) >= count

        return check

    async def close(self) -> None:
        for client in reversed(self.running):
            await client.stop()


@pytest.fixture
async def rig(settings, engine):
    rig = Rig(settings, engine)
    yield rig
    await rig.close()


def program_event(code: str, subject: uuid.UUID | None = None) -> CloudEvent:
    subject = subject or uuid.uuid4()
    return new_event(EVENT_TYPE, subject, ProgramCreated(id=subject, code=code))


def keyed(events: list[CloudEvent]) -> list[tuple[bytes, bytes]]:
    return [(e.subject.encode(), e.to_bytes()) for e in events]


async def read_topic(settings: CommonSettings, topic: str, expected: int, timeout: float = 15.0) -> list:
    """Every record of `topic`: waits for `expected` of them, then one more quiet poll for extras."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    records: list = []
    try:
        async def enough() -> bool:
            for batch in (await reader.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return len(records) >= expected

        await eventually(enough, timeout, what=f"{expected} records on {topic}")
        for batch in (await reader.getmany(timeout_ms=1000)).values():
            records.extend(batch)
    finally:
        await reader.stop()
    return records


# ---- outbox relay -----------------------------------------------------------------------------
async def test_relay_publishes_each_committed_event_and_consumer_applies_it_once(rig: Rig):
    await rig.create_topic(3)
    events = [program_event(f"p{i:03}") for i in range(30)]
    await rig.stage(events[:10])
    await rig.stage(events[10:])
    relay = rig.relay()
    relay.start()
    consumer = rig.consumer()
    consumer.start()

    await eventually(rig.has_effects(30), 30, what="30 effects")
    rows = await rig.effect_rows()
    assert sorted(r["event_id"] for r in rows) == sorted(e.id for e in events)
    assert await rig.processed() == Counter(applied=30)
    assert await relay.backlog() == 0
    assert rig.published() == 30
    assert rig.consumed("applied") == 30 and rig.consumed("duplicate") == 0
    assert relay.healthy and consumer.healthy


async def test_commits_made_while_the_relay_lingers_go_out_in_one_batch(rig: Rig):
    await rig.create_topic(1)
    # Polling is slow here, so only the commits wake the relay.
    relay = rig.relay(poll_interval=30, linger=0.5)
    batches: list[int] = []
    publish_batch = relay.publish_batch

    async def recorded() -> int:
        count = await publish_batch()
        if count:
            batches.append(count)
        return count

    relay.publish_batch = recorded
    relay.start()

    async def idle() -> bool:
        return relay.healthy  # its first look found nothing: it waits for a commit

    await eventually(idle, 15, what="relay waiting")
    events = [program_event(f"l{i}") for i in range(5)]
    for event in events:  # five transactions, as five requests would commit them
        await rig.stage([event])
    consumer = rig.consumer()
    consumer.start()
    await eventually(rig.has_effects(5), 30, what="5 effects")
    assert batches == [5], "the first commit woke the relay; the four behind it joined its batch"
    assert [r["event_id"] for r in await rig.effect_rows()] == [e.id for e in events]


@needs_stoppable_broker
async def test_relay_retries_while_broker_is_down_and_keeps_per_aggregate_order(
    rig: Rig, stoppable: Broker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="shared.outbox")
    first, second = uuid.uuid4(), uuid.uuid4()
    stoppable.stop()
    try:
        relay = rig.relay(max_backoff=0.4)
        relay.start()
        # Writes keep succeeding: one transaction per change, two aggregates interleaved.
        for i in range(12):
            await rig.stage([program_event(f"a{i:02}", first), program_event(f"b{i:02}", second)])
        assert await relay.backlog() == 24

        def retries() -> list[float]:
            return [r.retry_in_s for r in caplog.records if r.getMessage() == "outbox relay failed, retrying"]

        async def retried_three_times() -> bool:
            return len(retries()) >= 3

        await eventually(retried_three_times, 20, what="three relay retries")
        assert not relay.healthy
        assert await relay.backlog() == 24, "nothing is marked published while the broker is away"
        delays = retries()
        assert delays == sorted(delays) and max(delays) <= 0.4, "bounded exponential backoff"
    finally:
        stoppable.start()

    await rig.create_topic(3)
    consumer = rig.consumer()
    consumer.start()
    await eventually(rig.has_effects(24), 45, what="24 effects after the broker came back")
    rows = await rig.effect_rows()
    assert [r["code"] for r in rows if r["subject"] == str(first)] == [f"a{i:02}" for i in range(12)]
    assert [r["code"] for r in rows if r["subject"] == str(second)] == [f"b{i:02}" for i in range(12)]
    assert len(rows) == 24
    assert await relay.backlog() == 0 and relay.healthy
    assert await rig.processed() == Counter(applied=24)


@needs_stoppable_broker
async def test_broker_restarted_empty_is_noticed_without_a_signal_and_nothing_is_applied_twice(
    rig: Rig, stoppable: Broker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="shared.outbox")
    await rig.create_topic(3)
    events = [program_event(f"e{i:02}") for i in range(10)]
    await rig.stage(events)
    relay = rig.relay()
    relay.start()
    consumer = rig.consumer()
    consumer.start()
    await eventually(rig.has_effects(10), 30, what="10 effects")

    stoppable.stop()
    stoppable.start()  # memory storage: empty, no topics, no offsets, the same cluster id

    async def republished() -> bool:
        return rig.consumed("duplicate") >= 10 and relay.problem is None

    await eventually(republished, 45, what="the 10 events published again and skipped by the consumer")
    assert [r.reason for r in caplog.records if r.getMessage() == "the broker lost its log: republishing retained outbox"]
    late = program_event("late")
    await rig.stage([late])
    await eventually(rig.has_effects(11), 15, what="an event written after the broker's return applied")
    assert sorted(r["event_id"] for r in await rig.effect_rows()) == sorted(e.id for e in [*events, late])
    assert rig.consumed("applied") == 11
    assert await rig.processed() == Counter(applied=11)
    # The topic came back as ensure_topics makes it, not with the broker's default partition count.
    assert len(await partitions_of(rig.settings, rig.topic)) == 3


@needs_stoppable_broker
async def test_a_record_published_right_after_the_broker_came_back_empty_reaches_the_topic(rig: Rig, stoppable: Broker):
    """The bug of issue 18: Tansu acknowledges a record sent to a topic it no longer has (the producer's
    metadata still lists it), and drops it; the row was marked published and nothing sent it again."""
    await rig.create_topic(3)
    before = [program_event(f"b{i}") for i in range(6)]  # every partition gets an acknowledged offset
    await rig.stage(before)
    relay = rig.relay()
    relay.start()
    await eventually(lambda: rig.published() >= 6, 15, what="6 published")
    stoppable.stop()
    stoppable.start()
    after = program_event("after")
    await rig.stage([after])

    records = await read_topic(rig.settings, rig.topic, 7, timeout=20)
    assert after.id in {orjson.loads(r.value)["id"] for r in records}


async def test_a_relay_restarted_on_a_broker_that_kept_its_log_republishes_nothing(rig: Rig):
    await rig.create_topic(3)
    await rig.stage([program_event(f"k{i:02}") for i in range(10)])
    first = rig.relay()
    first.start()
    await eventually(lambda: rig.published() >= 10, 15, what="10 published")
    await first.stop()

    again = rig.relay()  # a service restart: the same broker, still holding what was published
    published_before = rig.published()
    again.start()
    await rig.stage([program_event("new")])
    await eventually(lambda: rig.published() == published_before + 1, 15, what="the new event published")
    await eventually(lambda: again._watching, 5, what="the relay watching the log")
    assert await again._watch.lost() is None
    assert rig.published() == published_before + 1 and again.problem is None


async def test_a_relay_publishing_steadily_finds_no_loss_in_a_log_that_kept_everything(
    rig: Rig, caplog: pytest.LogCaptureFixture
):
    """The watch reads the high watermarks while the relay raises its marks: it must compare with the
    marks as they were before it read. Compared with the marks of the instant (before 9d80f36), a stack
    under 170 writes/s re-published its retained outbox three times in 150 s, as the analytics bench did
    at 14:42Z and 14:49Z; one writer for 3 s did not show it: four side by side, a deep look every 0.1 s."""
    caplog.set_level(logging.WARNING, logger="shared.outbox")
    await rig.create_topic(3)
    relay = rig.relay(watch_interval=0.1, deep_watch_interval=0.0)
    relay.start()
    published_before = rig.published()
    stop_at = time.monotonic() + 4

    async def writer(name: str) -> int:
        writes = 0
        while time.monotonic() < stop_at:  # one commit after another: many reads of the cluster meanwhile
            await rig.stage([program_event(f"{name}{writes:04}")])
            writes += 1
        return writes

    writes = sum(await asyncio.gather(*(writer(f"w{i}-") for i in range(4))))
    await eventually(lambda: rig.published() - published_before >= writes, 15, what=f"{writes} published")
    assert not [r.getMessage() for r in caplog.records if "lost its log" in r.getMessage()]
    assert rig.published() - published_before == writes, "each row published once: nothing re-published"


async def partitions_of(settings: CommonSettings, topic: str) -> set[int]:
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await reader.start()
    try:
        await reader.topics()
        return reader.partitions_for_topic(topic) or set()
    finally:
        await reader.stop()


async def test_a_stopping_relay_publishes_what_is_pending_before_it_closes(rig: Rig):
    await rig.create_topic(1)
    relay = rig.relay(poll_interval=30, linger=10)  # woken by the commits, it would wait 10 s for more
    relay.start()
    await eventually(lambda: relay.healthy, 15, what="relay waiting")
    published_before = rig.published()
    await rig.stage([program_event(f"f{i}") for i in range(5)])
    started = time.monotonic()
    await relay.stop()
    assert time.monotonic() - started < 5, "the stop cut the linger short"
    assert rig.published() - published_before == 5 and await relay.backlog() == 0


async def test_rows_published_longer_ago_than_the_retention_are_deleted_and_no_others(rig: Rig):
    await rig.create_topic(1)
    kept, old = [program_event("kept")], [program_event(f"old{i}") for i in range(3)]
    await rig.stage(old + kept)
    ids = [e.id for e in old]
    async with rig.maker() as session:
        await session.execute(update(OutboxRecord).where(OutboxRecord.event_id.in_(ids))
                              .values(published_at=datetime.now(timezone.utc) - timedelta(hours=3)))
        await session.commit()
    relay = OutboxRelay(rig.maker, lambda: make_producer(rig.settings, unique("relay")), rig.metrics,
                        LogWatch(rig.settings, [rig.topic]), retention=timedelta(hours=2))
    rig.running.append(relay)
    relay.start()
    await eventually(lambda: relay.healthy, 15, what="relay running")

    async def left() -> set[str]:
        async with rig.maker() as session:
            rows = await session.execute(select(OutboxRecord.event_id).where(OutboxRecord.event_id.in_(ids + [kept[0].id])))
            return set(rows.scalars())

    assert await left() == {kept[0].id}, "the three past the retention deleted; the one just published kept"


async def test_a_stopping_consumer_finishes_its_batch_and_commits_its_offset(rig: Rig):
    await rig.create_topic(1)
    events = [program_event(f"s{i:02}") for i in range(30)]
    await rig.produce(keyed(events))
    calls: Counter = Counter()
    record = rig.effect("a")

    async def slow(session: AsyncSession, event: CloudEvent, payload: ProgramCreated) -> None:
        calls["n"] += 1
        await asyncio.sleep(0.02)
        await record(session, event, payload)

    consumer = rig.consumer(handler=slow)
    consumer.start()
    await eventually(lambda: calls["n"] > 0, 30, 0.005, what="the batch started")
    await consumer.stop()
    rig.running.remove(consumer)
    applied = len(await rig.effect_rows())
    assert applied > 0, "the batch in hand was finished, not cut (its transaction would have rolled back)"
    reader = AIOKafkaConsumer(bootstrap_servers=rig.settings.kafka_bootstrap, group_id=rig.group,
                              enable_auto_commit=False)
    await reader.start()
    try:
        assert await reader.committed(TopicPartition(rig.topic, 0)) == applied
    finally:
        await reader.stop()


# ---- consumer: crash between the database commit and the offset commit ------------------------
class Killed(BaseException):
    """The process dying: not an `Exception`, so the consumer's own restart loop does not catch it."""


class DiesBeforeOffsetCommit(EventConsumer):
    """Applies its first batch (database committed), then dies instead of committing the offset."""

    async def _commit(self, *args):
        raise Killed


class CommitFailsOnce(EventConsumer):
    failures = 0

    async def _commit(self, *args):
        if not self.failures:
            self.failures += 1
            raise KafkaConnectionError("simulated: the broker connection dropped before the offset commit")
        await super()._commit(*args)


async def test_consumer_killed_between_db_commit_and_offset_commit_applies_nothing_twice(rig: Rig):
    await rig.create_topic(3)
    events = [program_event(f"k{i:02}") for i in range(40)]
    await rig.produce(keyed(events))

    doomed = rig.consumer(cls=DiesBeforeOffsetCommit)
    doomed.start()
    with pytest.raises(Killed):
        await doomed._task
    await doomed._close()  # what the operating system does to a dead process's connections
    rig.running.remove(doomed)
    applied_first = len(await rig.effect_rows())
    assert applied_first > 0, "the first batch was committed to the database"
    assert await rig.processed() == Counter(applied=applied_first)

    fresh = rig.consumer(member="b")
    fresh.start()
    async def rest_applied() -> bool:  # both consumers count into the same metrics
        return rig.consumed("applied") == 40 and rig.consumed("duplicate") >= applied_first

    # The first batch may hold all 40 (a fetch's partitions are applied together): then the fresh
    # consumer applies nothing and only skips.
    await eventually(rest_applied, 30, what="the rest applied and the first batch redelivered")
    rows = await rig.effect_rows()
    assert len(rows) == 40 and {r["event_id"] for r in rows} == {e.id for e in events}
    assert await rig.processed() == Counter(applied=40)
    # The redelivered first batch was seen and skipped, not applied again.
    assert rig.consumed("duplicate") == applied_first


async def test_consumer_whose_offset_commit_fails_restarts_itself_without_reapplying(rig: Rig):
    await rig.create_topic(1)
    events = [program_event(f"c{i:02}") for i in range(25)]
    await rig.produce(keyed(events))
    consumer = rig.consumer(cls=CommitFailsOnce)
    consumer.start()

    async def all_applied_and_redelivery_seen() -> bool:
        return rig.consumed("applied") == 25 and rig.consumed("duplicate") > 0

    await eventually(all_applied_and_redelivery_seen, 30, what="25 applied after the restart")
    assert consumer.failures == 1
    assert len(await rig.effect_rows()) == 25
    assert await rig.processed() == Counter(applied=25)


# ---- consumer: poison messages and failing handlers --------------------------------------------
async def test_malformed_messages_are_dead_lettered_with_their_error_and_later_ones_still_apply(rig: Rig):
    await rig.create_topic(1)
    before = [program_event(f"v{i:02}") for i in range(5)]
    after = [program_event(f"w{i:02}") for i in range(5)]
    not_json = b"this is not json {"
    bad_payload = program_event("x").model_copy(update={"data": {"id": "not-a-uuid", "code": "x"}})
    await rig.produce(
        [*keyed(before), (b"junk", not_json), (bad_payload.subject.encode(), bad_payload.to_bytes()), *keyed(after)]
    )
    consumer = rig.consumer()
    consumer.start()
    await eventually(rig.has_effects(10), 30, what="the 10 valid events applied")

    dead = await read_topic(rig.settings, dead_letter_topic(rig.group), 2)
    assert len(dead) == 2
    # The dead-letter topic keeps the original key, so the two may sit in different partitions.
    bodies = sorted((orjson.loads(r.value) for r in dead), key=lambda b: b["offset"])
    assert [b["offset"] for b in bodies] == [5, 6]
    assert [b["value"] for b in bodies] == [not_json.decode(), bad_payload.to_bytes().decode()]
    for record in dead:
        headers = dict(record.headers)
        body = orjson.loads(record.value)
        assert headers["vmc-error"].decode() == body["error"]
        assert headers["vmc-consumer"].decode() == rig.group
        assert headers["vmc-original-topic"].decode() == rig.topic
    assert "not a CloudEvents 1.0 JSON envelope" in bodies[0]["error"]
    assert "uuid" in bodies[1]["error"].lower() and "id" in bodies[1]["error"]

    rows = await rig.effect_rows()
    assert [r["code"] for r in rows] == [e.data["code"] for e in [*before, *after]]
    # The bad envelope is remembered as dead-lettered so a replay does not dead-letter it again.
    assert await rig.processed() == Counter(applied=10, dead_letter=1)
    assert rig.metrics.registry.get_sample_value("vmc_dead_letters_total", {"consumer": rig.group}) == 2


async def test_handler_failing_every_time_is_retried_a_bounded_number_of_times_then_dead_lettered(rig: Rig):
    await rig.create_topic(1)
    events = [program_event(f"h{i:02}") for i in range(8)]
    cursed = events[3]
    calls: Counter = Counter()
    record = rig.effect("a")

    async def handler(session: AsyncSession, event: CloudEvent, payload: ProgramCreated) -> None:
        calls[event.id] += 1
        if event.id == cursed.id:
            raise RuntimeError(f"cannot project {payload.code}")
        await record(session, event, payload)

    await rig.produce(keyed(events))
    consumer = rig.consumer(handler=handler, max_retries=4)
    consumer.start()
    await eventually(rig.has_effects(7), 30, what="the 7 other events applied")

    dead = await read_topic(rig.settings, dead_letter_topic(rig.group), 1)
    assert len(dead) == 1
    body = orjson.loads(dead[0].value)
    assert body["error"] == "RuntimeError('cannot project h03')" and body["offset"] == 3
    # One attempt inside the failed batch, then max_retries attempts alone.
    assert calls[cursed.id] == 1 + 4
    assert [r["code"] for r in await rig.effect_rows()] == [e.data["code"] for e in events if e is not cursed]
    assert await rig.processed() == Counter(applied=7, dead_letter=1)


# ---- consumer group rebalance -----------------------------------------------------------------
async def test_member_leaving_mid_stream_hands_its_partitions_over_and_every_event_applies_once(rig: Rig):
    await rig.create_topic(3)
    record_a = rig.effect("a")

    async def slow_a(session: AsyncSession, event: CloudEvent, payload: ProgramCreated) -> None:
        # Member a works slowly, so it is stopped with events of its partitions still to do.
        await asyncio.sleep(0.01)
        await record_a(session, event, payload)

    first = [program_event(f"r{i:03}") for i in range(60)]
    second = [program_event(f"s{i:03}") for i in range(30)]
    a = rig.consumer("a", handler=slow_a)
    b = rig.consumer("b")
    a.start()
    b.start()
    await rig.produce(keyed(first))

    async def both_members_working() -> bool:
        members = Counter(r["member"] for r in await rig.effect_rows())
        return members["a"] > 0 and members["b"] > 0

    await eventually(both_members_working, 45, what="both members applying events")
    await a.stop()
    rig.running.remove(a)
    applied_by_a = Counter(r["member"] for r in await rig.effect_rows())["a"]
    await rig.produce(keyed(second))

    await eventually(rig.has_effects(90), 45, what="all 90 events applied")
    rows = await rig.effect_rows()
    assert len(rows) == 90
    assert {r["event_id"] for r in rows} == {e.id for e in [*first, *second]}
    members = Counter(r["member"] for r in rows)
    assert members["a"] == applied_by_a and members["b"] == 90 - applied_by_a
    assert {r["code"] for r in rows if r["member"] == "b"} >= {e.data["code"] for e in second}
    assert await rig.processed() == Counter(applied=90)
