"""How long a record waits between the producer's acknowledgement and a polling consumer, by the
consumers' fetch wait at the broker (`VMC_KAFKA_FETCH_MAX_WAIT_MS`), on Tansu; and what a shorter wait
costs idle consumers in CPU.

    .venv/bin/python -m bench.fetch_wait [--waits 500,100,50] [--seconds 8] [--idle-seconds 15]

For each wait: a Tansu broker (memory://) of its own, one producer (acks all, each send awaited), one
consumer polling with `getmany`; records at 5/s (the consumer's fetch mostly waiting at the broker) and at
200/s (the analytics bench's write rate); latency from the send's acknowledgement to `getmany` returning the
record, p50 / p99 / max. Then three idle consumers of three topics for `--idle-seconds`: the broker's and the
clients' CPU, as a percentage of one core. The CPU probe is printed beside each line.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.stack import cpu_speed, process_cpu_seconds
from deploy.processes import free_port, start_tansu, stop

RATES = (5, 200)


async def _broker() -> tuple[subprocess.Popen, str]:
    """A Tansu broker of its own (memory://) on a free port, listening."""
    port = free_port()
    broker = await asyncio.to_thread(start_tansu, port)
    return broker, f"127.0.0.1:{port}"


async def latency(wait_ms: int, rate: int, seconds: float) -> list[float]:
    """Milliseconds from each record's acknowledgement to the consumer's `getmany` returning it."""
    broker, bootstrap = await _broker()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=0)
    consumer = AIOKafkaConsumer("t", bootstrap_servers=bootstrap, group_id="g", auto_offset_reset="earliest",
                                fetch_max_wait_ms=wait_ms)
    acked: dict[bytes, float] = {}
    received: dict[bytes, float] = {}
    try:
        await producer.start()
        await producer.send_and_wait("t", b"first")   # the topic exists before the consumer joins
        await consumer.start()

        async def consume() -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                now = time.perf_counter()
                for records in batches.values():
                    for record in records:
                        received.setdefault(record.value, now)

        polling = asyncio.create_task(consume())
        while b"first" not in received:   # the consumer holds its partition and polls
            await asyncio.sleep(0.05)
        for i in range(int(rate * seconds)):
            key = str(i).encode()
            await producer.send_and_wait("t", key)
            acked[key] = time.perf_counter()
            await asyncio.sleep(1 / rate)
        deadline = time.monotonic() + 5
        while len(received) <= len(acked) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        polling.cancel()
    finally:
        await consumer.stop()
        await producer.stop()
        stop(broker)
    missing = [key for key in acked if key not in received]
    if missing:
        raise RuntimeError(f"{len(missing)} records not consumed within 5 s")
    # A record can come back in the same getmany as its send returns: 0, not negative.
    return sorted(max(0.0, (received[key] - acked[key]) * 1000) for key in acked)


async def idle_cpu(wait_ms: int, seconds: float) -> tuple[float, float]:
    """Percent of one core the broker and this process spend on three idle consumers' fetches."""
    broker, bootstrap = await _broker()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    consumers = [AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"g{topic}", auto_offset_reset="earliest",
                                  fetch_max_wait_ms=wait_ms) for topic in ("a", "b", "c")]
    tasks: list[asyncio.Task] = []
    try:
        await producer.start()
        for topic in ("a", "b", "c"):
            await producer.send_and_wait(topic, b"x")
        for consumer in consumers:
            await consumer.start()

        caught_up = [asyncio.Event() for _ in consumers]

        async def poll(consumer: AIOKafkaConsumer, done: asyncio.Event) -> None:
            while True:
                if any((await consumer.getmany(timeout_ms=500)).values()):
                    done.set()   # joined, and past the one record its topic holds

        tasks = [asyncio.create_task(poll(c, e)) for c, e in zip(consumers, caught_up)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in caught_up)), 30)
        broker_before, ours_before, began = process_cpu_seconds(broker.pid), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - began
        return (100 * (process_cpu_seconds(broker.pid) - broker_before) / elapsed,
                100 * (time.process_time() - ours_before) / elapsed)
    finally:
        for task in tasks:
            task.cancel()
        for consumer in consumers:
            await consumer.stop()
        await producer.stop()
        stop(broker)


async def run(waits: list[int], seconds: float, idle_seconds: float) -> None:
    for wait in waits:
        for rate in RATES:
            spent = await latency(wait, rate, seconds)
            p99 = spent[min(len(spent) - 1, int(len(spent) * 0.99))]
            print(f"fetch_max_wait_ms {wait:>4}, {rate:>3} records/s: ack → consumed p50 {statistics.median(spent):6.1f} ms, "
                  f"p99 {p99:6.1f} ms, max {spent[-1]:6.1f} ms (n {len(spent)}; cpu probe {cpu_speed(3):.0f} µs)", flush=True)
        broker, clients = await idle_cpu(wait, idle_seconds)
        print(f"fetch_max_wait_ms {wait:>4}, three idle consumers: broker {broker:.2f} % of a core, clients {clients:.2f} % "
              f"(cpu probe {cpu_speed(3):.0f} µs)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch_wait", description=__doc__.splitlines()[0])
    parser.add_argument("--waits", default="500,100,50", help="fetch_max_wait_ms values, comma-separated")
    parser.add_argument("--seconds", type=float, default=8, help="seconds of records at each rate")
    parser.add_argument("--idle-seconds", type=float, default=15)
    args = parser.parse_args(argv)
    asyncio.run(run([int(w) for w in args.waits.split(",")], args.seconds, args.idle_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
