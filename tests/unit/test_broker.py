"""The broker module's own decisions: when a broker epoch is new to a database, and when a consumer must
rejoin its group because a topic came back with another partition count (Tansu keeps a rejoining
member on its old assignment)."""
from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

from shared.broker import PartitionCounts, RelayState, is_new_epoch


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


async def test_an_epoch_is_new_once_and_the_latest_is_recorded():
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: SQLModel.metadata.create_all(sync, tables=[RelayState.__table__]))
    maker = async_sessionmaker(engine, expire_on_commit=False)
    try:
        for epoch, new in (("one", True), ("one", False), ("two", True), ("two", False)):
            async with maker() as session:
                assert await is_new_epoch(session, epoch) is new, epoch
                await session.commit()
        async with maker() as session:
            assert await is_new_epoch(session, "three")
            # Not committed: the caller's republication failed, so the next start republishes again.
        async with maker() as session:
            assert (await session.get(RelayState, "broker_epoch")).value == "two"
    finally:
        await engine.dispose()
