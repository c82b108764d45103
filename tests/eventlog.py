"""Reading a topic from the beginning in tests, without a consumer group: every partition read from its start
(joining a group took 5 s a call on Tansu)."""
from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaConsumer


async def find_events(bootstrap: str, topic: str, match: Callable[[dict], bool], *, count: int = 1,
                      timeout: float = 20.0) -> list[dict]:
    """The first `count` CloudEvents on `topic` for which `match(event)` holds (each with `_raw` bytes)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[dict] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(found) < count:
            batches = await consumer.getmany(timeout_ms=300)
            for messages in batches.values():
                for message in messages:
                    try:
                        event = orjson.loads(message.value)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(event, dict) and match(event):
                        event["_raw"] = message.value
                        event["_key"] = message.key
                        found.append(event)
    finally:
        await consumer.stop()
    if len(found) < count:
        raise AssertionError(f"found {len(found)} of {count} matching events on {topic} within {timeout} s")
    return found[:count]
