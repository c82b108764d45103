"""Freshness alone (issue 17): the analytics bench's freshness probes on a stack without the history load,
and the activities outbox relay's leg measured on every row written meanwhile, not only the probes'.

    python -m bench.freshness [--seconds 30] [--profile PATH]

One PostgreSQL stack, set up as the analytics bench's (bench.activities.prepare, 50 volunteers), no
synthetic history (the analytics store holds only this run's activities: its batch transactions are
cheaper than on 1 M activities, so published → counted is a floor here). `bench.analytics.measure_freshness`
runs as it is there: steady `POST /activities` at up to WRITE_RATE (200) a second from a separate process, one
probe at a time (a submission, then its verification) timed from its 2xx to the `/analytics/hours` answer
counting it, split per leg from the probe's outbox row. Then every outbox row written during the run gives
the relay leg (created_at → published_at: the relay's wake, read, produce, acknowledgement) with
thousands of samples, and the published_at values the batches (rows per batch, batches per second).
`--profile PATH` records the activities service with py-spy meanwhile (a flame graph, SVG).
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import asyncpg

from bench.activities import prepare
from bench.analytics import QUICK, VALUE, Sizes, measure_freshness
from bench.stack import cpu_speed, running_stack
from bench.stats import figure, format_table, percentile
from tests.harness import Stack

SETUP_VOLUNTEERS = 50


def relay_rows(url: str, since: datetime) -> list[tuple[float, float | None]]:
    """(created_at, published_at) in epoch seconds of the outbox rows created since `since`."""
    async def read() -> list:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
        try:
            return await conn.fetch("SELECT created_at, published_at FROM outbox WHERE created_at >= $1 ORDER BY seq", since)
        finally:
            await conn.close()

    return [(c.timestamp(), p.timestamp() if p else None) for c, p in asyncio.run(read())]


def relay_figures(rows: list[tuple[float, float | None]]) -> dict[str, object]:
    """The relay leg over every row: p50/p99/max ms, rows never published, rows per batch (a batch's
    rows share their published_at) and batches per second."""
    waits = [(p - c) * 1000 for c, p in rows if p is not None]
    if not waits:
        return {figure("relay, every row: outbox rows", VALUE): len(rows)}
    batches = Counter(p for _, p in rows if p is not None)
    span = max(batches) - min(batches) or 1.0
    name = "relay, every row (created → published)"
    return {figure(name, "p50 ms"): percentile(waits, 50), figure(name, "p99 ms"): percentile(waits, 99),
            figure(name, "max ms"): max(waits), figure(name, "n"): len(waits),
            figure("relay: rows never published", VALUE): len(rows) - len(waits),
            figure("relay: rows per batch, mean", VALUE): len(waits) / len(batches),
            figure("relay: batches per second", VALUE): len(batches) / span}


def profiled(stack: Stack, path: Path, seconds: float) -> subprocess.Popen:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--nonblocking", "-o", str(path),
                             "-d", str(int(seconds)), "-p", str(stack.procs["activities"].pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def run(seconds: float, profile: Path | None) -> dict[str, object]:
    sizes = Sizes(activities=0, volunteers=0, query_seconds=0, freshness_seconds=seconds,
                  setup_volunteers=SETUP_VOLUNTEERS) if seconds else QUICK
    with running_stack("postgresql") as stack:
        setup = prepare(stack, sizes.setup_volunteers)
        since = datetime.now(timezone.utc)
        spy = profiled(stack, profile, sizes.freshness_seconds) if profile else None
        began = time.monotonic()
        figures = measure_freshness(stack, setup, sizes)
        elapsed = time.monotonic() - began
        if spy is not None:
            spy.wait(60)
        figures |= relay_figures(relay_rows(stack.db_urls["activities"], since))
        figures[figure("seconds measured", VALUE)] = elapsed
        figures[figure("cpu probe after, µs", VALUE)] = cpu_speed()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="how long the probes run (0: the analytics bench's --quick)")
    parser.add_argument("--profile", type=Path, help="py-spy flame graph of the activities service, SVG")
    args = parser.parse_args(argv)
    print(f"cpu probe: {cpu_speed():.0f} µs for a fixed Python loop (lower is faster)", flush=True)
    print(format_table("freshness", run(args.seconds, args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
