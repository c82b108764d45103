"""The broker module's own decisions: what the outbox relay remembers of the offsets the broker
acknowledged (and when an acknowledgement shows a lost log), when a consumer must rejoin its group
because a topic came back with another partition count (Tansu keeps a rejoining member on its old
assignment), and when a consumer left without an assignment is taken for stuck."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

from shared.broker import LogWatch, Membership, PartitionCounts, RelayState, join_deadline, make_consumer, refusal
from shared.consumer import EventConsumer
from shared.metrics import Metrics
from shared.settings import CommonSettings
from tests.conftest import eventually


class FakeConsumer:
    """Answers partitions_for_topic as aiokafka does: a set of ids, or None for a topic not known yet."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def partitions_for_topic(self, topic: str):
        return set(range(self.counts[topic])) if topic in self.counts else None


def test_a_topic_back_with_another_partition_count_makes_the_consumer_rejoin():
    watch = PartitionCounts(["a", "b"])
    consumer = FakeConsumer({"a": 3, "b": 1})
    watch.check(consumer)  # nothing assigned yet: nothing to compare
    watch.assigned(consumer)
    watch.check(consumer)
    del consumer.counts["b"]
    watch.check(consumer)  # gone: being re-created
    consumer.counts["b"] = 3
    with pytest.raises(RuntimeError, match="b now has 3 partitions, not 1"):
        watch.check(consumer)


def test_a_topic_created_after_the_assignment_makes_the_consumer_rejoin():
    """A consumer that joined a broker back empty before the topics were re-created got none of their
    partitions (and Tansu would hand it the same empty assignment again): it starts over."""
    watch = PartitionCounts(["a", "b"])
    consumer = FakeConsumer({"a": 3})
    watch.assigned(consumer)
    watch.check(consumer)
    consumer.counts["b"] = 2
    with pytest.raises(RuntimeError, match="b now has 2 partitions, not 0"):
        watch.check(consumer)
    watch.assigned(consumer)  # the new member's assignment is made from both
    watch.check(consumer)


def test_an_acknowledgement_not_above_the_partitions_mark_means_a_lost_log():
    watch = LogWatch(CommonSettings(), ["t"])
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    assert watch.acknowledged(p0, 0) and watch.acknowledged(p0, 7) and watch.acknowledged(p1, 0)
    assert not watch.acknowledged(p0, 7), "an offset is acknowledged once: the same one again is a new log"
    assert not watch.acknowledged(p0, 0)
    assert watch.acknowledged(p0, 8)
    assert watch.marks == {p0: 8, p1: 0}


async def test_the_marks_survive_a_restart_and_are_forgotten_on_republication():
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: SQLModel.metadata.create_all(sync, tables=[RelayState.__table__]))
    maker = async_sessionmaker(engine, expire_on_commit=False)
    settings = CommonSettings()
    try:
        first = LogWatch(settings, ["t"], save_interval=60)
        for offset in (3, 4):
            first.acknowledged(TopicPartition("t", 2), offset)
            async with maker() as session:
                await first.save(session)
                await session.commit()
        restarted = LogWatch(settings, ["t"])
        async with maker() as session:
            await restarted.load(session)
        assert restarted.marks == {TopicPartition("t", 2): 3}, "the second save came within the interval"
        async with maker() as session:
            await first.save(session, force=True)  # the relay's last, when it stops
            await session.commit()
            await restarted.load(session)
        assert restarted.marks == {TopicPartition("t", 2): 4}
        async with maker() as session:
            await restarted.forget(session)
            await session.commit()
        assert restarted.marks == {}
        again = LogWatch(settings, ["t"])
        async with maker() as session:
            await again.load(session)
        assert again.marks == {} and again.acknowledged(TopicPartition("t", 2), 0)
    finally:
        await engine.dispose()


async def test_membership_counts_the_time_without_an_assignment_across_rejoins_and_clients():
    membership = Membership()
    assert membership.unassigned_for() > 0, "unassigned until the group says otherwise"
    await membership.on_partitions_assigned(set())  # an empty assignment is one (more members than partitions)
    assert membership.unassigned_for() == 0 and membership.joining_since is None
    await membership.on_partitions_revoked(set())
    since = membership.joining_since
    assert since is not None and membership.generation == 1
    membership.joining()  # a new client of the same consumer: the wait goes on, it does not start again
    assert membership.joining_since == since
    await membership.on_partitions_assigned({TopicPartition("t", 0)})
    assert membership.unassigned_for() == 0


async def test_consumers_wait_at_the_broker_as_long_as_the_setting_says():
    """On Tansu a record produced while a consumer's fetch waits at the broker arrives late (up to aiokafka's
    500 ms default wait; README, "Configuration"), so the services' consumers take a shorter one, a setting."""
    assert CommonSettings().kafka_fetch_max_wait_ms == 100
    for wait in (100, 20):
        consumer = make_consumer(CommonSettings(kafka_fetch_max_wait_ms=wait), "group", ["topic"])
        try:
            assert consumer._fetch_max_wait_ms == wait   # aiokafka keeps it here and sends it with every fetch
        finally:
            await consumer.stop()   # never started: nothing to leave, only the unclosed-client warning to avoid
    with pytest.raises(ValueError):
        CommonSettings(kafka_fetch_max_wait_ms=0)


def test_the_join_deadline_is_three_session_timeouts():
    assert join_deadline(CommonSettings(kafka_session_timeout_ms=4_000)) == 12.0


class Client:
    """An aiokafka consumer's surface as EventConsumer uses it; `start` completes the join (the group
    assigns nothing) only when `joins`, else waits for good, as aiokafka's does when no assignment comes."""

    def __init__(self, joins: bool):
        self.joins = joins
        self.listener = None
        self.stopped = False

    def subscribe(self, topics, listener):
        self.listener = listener

    async def start(self):
        if not self.joins:
            await asyncio.Event().wait()
        await self.listener.on_partitions_assigned(set())

    async def getmany(self, timeout_ms, max_records):
        await asyncio.sleep(timeout_ms / 1000 / 50)
        return {}

    def assignment(self):
        return set()

    def partitions_for_topic(self, topic):
        return None

    async def stop(self):
        self.stopped = True


class Producer:
    async def start(self):
        pass

    async def stop(self):
        pass


async def test_a_consumer_whose_join_never_completes_says_so_and_starts_over_with_a_new_client():
    clients = [Client(joins=False), Client(joins=True)]
    handed: list[Client] = []

    def factory(group, topics):
        handed.append(clients[len(handed)])
        return handed[-1]

    consumer = EventConsumer("c", ["t"], {}, None, factory, Producer, Metrics("svc"), join_timeout=0.3)
    consumer.start()
    try:
        async def stuck() -> bool:
            return consumer.problem is not None

        await eventually(stuck, 5, 0.01, what="the consumer reporting its missing assignment")
        assert consumer.problem.startswith("consumer c has had no partitions assigned for")
        await eventually(lambda: len(handed) == 2 and consumer.unassigned_for == 0, 15, 0.01,
                         what="a second client, assigned")
        assert handed[0].stopped, "the stuck client was closed"
        assert consumer.problem is None
    finally:
        await consumer.stop()


async def test_a_consumer_left_without_an_assignment_after_a_rebalance_starts_over():
    handed: list[Client] = []

    def factory(group, topics):
        handed.append(Client(joins=True))
        return handed[-1]

    consumer = EventConsumer("c", ["t"], {}, None, factory, Producer, Metrics("svc"), join_timeout=0.3)
    consumer.start()
    try:
        await eventually(lambda: consumer.unassigned_for == 0, 5, 0.01, what="the first client assigned")
        await handed[0].listener.on_partitions_revoked(set())  # a rebalance begins; no assignment follows
        started = time.monotonic()
        await eventually(lambda: len(handed) == 2, 5, 0.01, what="a second client")
        assert time.monotonic() - started >= 0.3
        await eventually(lambda: consumer.unassigned_for == 0, 5, 0.01, what="the second client assigned")
    finally:
        await consumer.stop()


@pytest.mark.parametrize("error", [kafka.UnknownError(), kafka.UnsupportedVersionError(),
                                   kafka.TopicAuthorizationFailedError(), kafka.ClusterAuthorizationFailedError()])
def test_a_broker_answering_with_a_final_error_has_refused(error):
    assert refusal(error, "the relay") == f"the broker refused the relay: {type(error).__name__}"
    assert "VMC_KAFKA_IDEMPOTENCE" in refusal(error, "the relay", starting=True)


@pytest.mark.parametrize("error", [kafka.KafkaConnectionError(), kafka.NodeNotReadyError(), kafka.RequestTimedOutError(),
                                   kafka.NotLeaderForPartitionError(), kafka.KafkaTimeoutError(), OSError(), ValueError()])
def test_an_absent_or_busy_broker_has_not_refused(error):
    assert refusal(error, "the relay", starting=True) is None


class ShortClient(Client):
    """Assigned partition 0 of topic t's two (a stale assignment, or another member in the group), or
    both when `whole`."""

    def __init__(self, whole: bool):
        super().__init__(joins=True)
        self.whole = whole
        self.fetches = 0

    def assignment(self):
        return {TopicPartition("t", 0), TopicPartition("t", 1)} if self.whole else {TopicPartition("t", 0)}

    def partitions_for_topic(self, topic):
        return {0, 1}

    def highwater(self, tp):
        return None

    async def getmany(self, timeout_ms, max_records):
        self.fetches += 1
        return await super().getmany(timeout_ms, max_records)


async def test_a_consumer_of_its_own_group_holding_some_partitions_only_says_so_and_starts_over():
    handed: list[ShortClient] = []

    def factory(group, topics):
        handed.append(ShortClient(whole=len(handed) > 0))
        return handed[-1]

    consumer = EventConsumer("c", ["t"], {}, None, factory, Producer, Metrics("svc"), join_timeout=0.3,
                             every_partition=True)
    consumer.start()
    try:
        await eventually(lambda: consumer.problem is not None, 5, 0.01, what="the consumer reporting its short assignment")
        assert consumer.problem == ("consumer c holds 1 of the 2 partitions of its topics, yet its group c should be "
                                    "its own: rejoining as a new member")
        await eventually(lambda: len(handed) == 2 and consumer.problem is None, 15, 0.01,
                         what="a second client holding both partitions")
        assert handed[0].stopped
    finally:
        await consumer.stop()


async def test_a_consumer_of_a_shared_group_may_hold_some_partitions_only():
    handed: list[ShortClient] = []

    def factory(group, topics):
        handed.append(ShortClient(whole=False))
        return handed[-1]

    consumer = EventConsumer("c", ["t"], {}, None, factory, Producer, Metrics("svc"), join_timeout=0.1)
    consumer.start()
    try:
        await eventually(lambda: consumer.healthy, 5, 0.01, what="the consumer consuming")
        started = time.monotonic()
        # Fetching on and on (each fetch checks the assignment) for longer than five join deadlines.
        await eventually(lambda: handed[0].fetches > 50 and time.monotonic() - started > 0.5, 10, 0.01,
                         what="fifty fetches over five join deadlines")
        assert len(handed) == 1 and consumer.problem is None
    finally:
        await consumer.stop()
