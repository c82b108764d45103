"""The broker module's own decisions: what the outbox relay remembers of the offsets the broker
acknowledged (and when an acknowledgement shows a lost log), and when a consumer must rejoin its group
because a topic came back with another partition count (Tansu keeps a rejoining member on its old
assignment)."""
from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

from shared.broker import LogWatch, PartitionCounts, RelayState
from shared.settings import CommonSettings


class FakeConsumer:
    """Answers partitions_for_topic as aiokafka does: a set of ids, or None for a topic not known yet."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def partitions_for_topic(self, topic: str):
        return set(range(self.counts[topic])) if topic in self.counts else None


def test_a_topic_back_with_another_partition_count_makes_the_consumer_rejoin():
    watch = PartitionCounts(["a", "b"])
    consumer = FakeConsumer({"a": 3})
    watch.check(consumer)  # b not known yet: nothing to compare
    consumer.counts["b"] = 1
    watch.check(consumer)
    watch.check(consumer)
    consumer.counts["b"] = 3
    with pytest.raises(RuntimeError, match="b now has 3 partitions, not 1"):
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
