"""The outbox relay's wake-up and its own thread, against a real broker and a real database.

What a service relies on for freshness (issue 17): a commit reaches the broker without waiting for the
relay's poll, also when it was made while the relay had a batch out, and a relay in a thread of its
own (`own_engine`, PostgreSQL services) publishes while the service's event loop is busy or blocked.
Every relay here polls only every 30 s, so anything published sooner was published because of a wake.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict

from shared.broker import LogWatch, make_producer
from shared.db import make_engine
from shared.outbox import OutboxRelay
from tests.conftest import eventually
from tests.harness import unique
# The module's own broker and migrated database, and the rig of one test (topic, sessions, metrics), as
# test_outbox_consumer makes them.
from tests.integration.test_outbox_consumer import (  # noqa: F401
    Rig, database_url, engine, own_broker, own_workdir, program_event, read_topic, rig, settings,
)

SLOW_POLL = 30.0  # seconds: far beyond every deadline below
DEADLINE = 15.0


def relay_of(rig: Rig, database_url: str, *, own_thread: bool, linger: float = 0.0) -> OutboxRelay:
    """The rig's relay, polling every 30 s; `own_thread`: in a thread of its own, as on a PostgreSQL service."""
    own_engine = (lambda: make_engine(database_url, pool_size=2, max_overflow=1)) if own_thread else None
    relay = OutboxRelay(rig.maker, lambda: make_producer(rig.settings, unique("relay")), rig.metrics,
                        LogWatch(rig.settings, [rig.topic]), poll_interval=SLOW_POLL, linger=linger,
                        own_engine=own_engine)
    rig.running.append(relay)  # stopped at the test's end
    return relay


async def per_key(rig: Rig, expected: int) -> dict[str, list[bytes]]:
    keys: dict[str, list[bytes]] = defaultdict(list)
    for record in await read_topic(rig.settings, rig.topic, expected):
        keys[record.key.decode()].append(record.value)
    return keys


async def idle(relay: OutboxRelay) -> None:
    """Its first look found nothing: from now on only a commit (or the slow poll) makes it publish."""
    await eventually(lambda: relay.healthy, DEADLINE, what="relay waiting")


async def test_a_commit_made_while_a_batch_was_out_is_published_without_waiting_for_the_poll(rig: Rig, database_url: str):
    await rig.create_topic(3)
    relay = relay_of(rig, database_url, own_thread=False)
    first, second = program_event("first"), program_event("second")
    publish_batch = relay.publish_batch
    batches: list[int] = []

    async def commit_behind_the_first_batch() -> int:
        count = await publish_batch()
        if count:
            batches.append(count)
            if len(batches) == 1:
                await rig.stage([second])  # after the batch's read: it wakes the next batch
        return count

    relay.publish_batch = commit_behind_the_first_batch
    relay.start()
    await idle(relay)
    began = time.monotonic()
    await rig.stage([first])
    await eventually(lambda: rig.published() == 2, DEADLINE, what="both published")
    assert time.monotonic() - began < SLOW_POLL / 2, "the second commit waited for the poll"
    keys = await per_key(rig, 2)
    assert sorted(v for values in keys.values() for v in values) == sorted([first.to_bytes(), second.to_bytes()])


async def test_a_relay_in_its_own_thread_publishes_in_order_while_the_services_loop_is_blocked(rig: Rig, database_url: str):
    await rig.create_topic(3)
    relay = relay_of(rig, database_url, own_thread=True)
    relay.start()
    await idle(relay)
    subjects = [uuid.uuid4() for _ in range(4)]
    events = [program_event(f"c{i}", subjects[i % len(subjects)]) for i in range(20)]
    for event in events:  # twenty requests' transactions; each commit wakes the relay across threads
        await rig.stage([event])
    # The service's loop does nothing else until the relay marked all twenty (or the deadline): a
    # relay running on this loop could not publish one of them meanwhile.
    deadline = time.monotonic() + DEADLINE
    while rig.published() < len(events) and time.monotonic() < deadline:
        time.sleep(0.01)  # blocks this loop on purpose; the condition is the relay thread's count
    assert rig.published() == len(events), "the relay waited for the service's loop"
    keys = await per_key(rig, len(events))
    for subject in subjects:
        assert keys[str(subject)] == [e.to_bytes() for e in events if e.subject == str(subject)], "insertion order per key"


async def test_a_relay_in_its_own_thread_publishes_what_is_pending_when_stopped_and_ends_its_thread(rig: Rig, database_url: str):
    await rig.create_topic(3)
    relay = relay_of(rig, database_url, own_thread=True, linger=SLOW_POLL)  # a commit's batch would wait 30 s
    relay.start()
    await idle(relay)
    events = [program_event(f"s{i}") for i in range(3)]
    await rig.stage(events)
    began = time.monotonic()
    await relay.stop()
    assert time.monotonic() - began < DEADLINE
    assert rig.published() == 3 and await relay.backlog() == 0
    assert not any(t.name == "outbox-relay" and t.is_alive() for t in threading.enumerate())
    keys = await per_key(rig, 3)
    assert sum(len(v) for v in keys.values()) == 3
