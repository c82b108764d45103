"""The rebuild hands its position in the log to the service: offsets recorded in the store with the
figures, committed to the service's consumer group, so the service started on a rebuilt store reads
only what came after, and an event re-published after that (same id, new offset) changes nothing."""
from __future__ import annotations

import random
import uuid

from services.analytics.rebuild import rebuild_offline
from services.analytics.store import MEMORY, AnalyticsStore
from shared.events import ACTIVITY_SUBMITTED, ACTIVITY_VERIFIED
from tests.conftest import eventually
from tests.integration.analytics_events import (
    OwnTopics, apply_in_order, figures, make_topics, processed, programme_history, publish, records_of, settings_for,
    store_consumer,
)


async def test_the_service_resumes_where_the_rebuild_stopped(broker, tmp_path):
    topics = OwnTopics()
    settings = settings_for(broker.bootstrap, store_path=str(tmp_path / "analytics.duckdb"),
                            consumer_group=f"{topics.consumer}-service")
    await make_topics(settings, topics)
    history = programme_history()
    keys = random.Random(5)
    await publish(settings, topics, records_of(topics, history.events, keys))

    # The service consumed under its group before it was stopped (a group with a history: Tansu then
    # refuses a commit from outside it).
    before = AnalyticsStore(MEMORY)
    earlier, _ = store_consumer(settings, topics, before, group_id=settings.consumer_group)
    earlier.start()
    try:
        await eventually(lambda: processed(before, topics.consumer).get("applied") == len(history.events), 30,
                         what="the service's consumer applying the log before the rebuild")
    finally:
        await earlier.stop()
        before.close()

    progress = await rebuild_offline(settings, lambda p: None, topics=topics.both)
    assert progress.state == "done" and progress.note is None
    store = AnalyticsStore(settings.resolved_store_path())
    consumer, metrics = store_consumer(settings, topics, store, group_id=settings.consumer_group)
    try:
        offsets = store.query("SELECT topic, partition, next_offset FROM consumed_offsets")
        assert {f"{t}/{p}": o for t, p, o in offsets if o} == {k: v for k, v in progress.ends.items() if v}
        # No activity event's id was recorded (the offsets stand for them); the registry's few were.
        activity_ids = {e.id for e in history.events if e.type.startswith("vmc.activity.")}
        recorded = {row[0] for row in store.query("SELECT event_id FROM processed_events")}
        assert recorded and not recorded & activity_ids

        # After the rebuild: a new activity, and an already applied one re-published (same id, new offset).
        new = uuid.uuid4()
        added = history.add(ACTIVITY_SUBMITTED, history.activity(new, history.others[2], 1, "submitted", hours=1.0))
        again = next(e for e in history.events if e.type == ACTIVITY_VERIFIED)
        await publish(settings, topics, records_of(topics, [added, again], keys))
        consumer.start()
        await eventually(lambda: store.query("SELECT count(*) FROM activity WHERE id = $1", [new]) == [(1,)], 30,
                         what="the service applying the event published after the rebuild")
        # It read the two records after the rebuild's offsets, not the log again.
        def consumed() -> float:
            return sum(metrics.consumed.labels(topics.consumer, outcome)._value.get() for outcome in ("applied", "duplicate"))
        await eventually(lambda: consumed() >= 2, 30, what="both records after the rebuild read")
        assert consumed() == 2
        reference = await apply_in_order(history.events)
        try:
            assert store.contents() == reference.contents()
        finally:
            reference.close()
        assert figures(store, history.project)["verified_hours"] == 3.5
    finally:
        await consumer.stop()
        store.close()
