"""The live consumer's batches on a big store, committed, statement by statement.

`bench/analytics_engine.py` rolls each batch back, which hides the commit (and, before the checkpoint
threshold was raised, the checkpoint every commit was). This applies BATCHES batches of SIZE new
submissions through the consumer's path (`projections._apply_new`) to a copy of a store built by
`python -m bench.analytics_engine --store PATH`, as the service does (`AnalyticsStore(serving=True)`:
one DuckDB thread), each committed, and prints each transaction's wall time, p50 and max, then every statement's
median and count, with the CPU probe.

    .venv/bin/python -m bench.analytics_batches --store /tmp/s10m.db [--local] [--verify]

Each batch is the consumer's transaction (`_apply_new`: the rows stored, noted as pending), then the upkeep's
(`catch_up`: the derived tables brought up to them), each committed and timed on its own.

`--local`: the submissions of the 10 M bench's live writes (`bench/analytics.py`): one project, 500
volunteers of neighbouring keys, dates within 30 days; otherwise random volunteers, 50 projects and
dates over 1,000 days (every cell and chunk a new one: the worst case). `--verify`: each batch also
verifies the previous batch's last submission (a stored row changed: the full difference for one volunteer).
"""
from __future__ import annotations

import argparse
import random
import shutil
import statistics
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

from bench.analytics_engine import event_of, submission
from bench.stack import cpu_speed
from services.analytics import projections
from services.analytics.store import AnalyticsStore
from shared.events import ACTIVITY_VERIFIED

TODAY = date(2026, 12, 1)


class Timed:
    """A DuckDB connection whose `execute` notes each statement's milliseconds under its first words."""

    def __init__(self, conn, times: dict[str, list[float]]):
        self._conn, self._times = conn, times

    def execute(self, sql: str, params=None):
        began = time.perf_counter()
        result = self._conn.execute(sql) if params is None else self._conn.execute(sql, params)
        self._times[" ".join(sql.split())[:90]].append((time.perf_counter() - began) * 1000)
        return result

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics_batches", description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a store built by bench.analytics_engine (copied, not changed)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--verify", action="store_true")
    args = parser.parse_args(argv)
    copy = Path(args.store).with_suffix(".batches.db")
    shutil.copy(args.store, copy)
    store = AnalyticsStore(copy, serving=True)
    rng = random.Random(7)
    if args.local:
        volunteers = [r[0] for r in store.query("SELECT id FROM volunteer WHERE merged_into IS NULL ORDER BY key DESC LIMIT 500")]
        projects = store.query("SELECT id, program_id, organization_id FROM project LIMIT 1")
    else:
        volunteers = [r[0] for r in store.query("SELECT id FROM volunteer WHERE merged_into IS NULL USING SAMPLE 2000 ROWS")]
        projects = store.query("SELECT id, program_id, organization_id FROM project LIMIT 50")
    times: dict[str, list[float]] = defaultdict(list)
    walls: dict[str, list[float]] = defaultdict(list)
    last = None
    for _ in range(args.batches):
        days = [rng.randrange(210, 240) if args.local else rng.randrange(1, 1000) for _ in range(args.size)]
        submitted = [submission(rng.choice(volunteers), rng.choice(projects), TODAY - timedelta(days=d)) for d in days]
        events = list(submitted)
        if args.verify and last is not None:
            events.append(event_of(ACTIVITY_VERIFIED, {**last, "status": "verified", "approved_hours": 2.0,
                                                       "revision": 2, "version": 2}))
        last = submitted[-1][1].model_dump(mode="json")
        conn = store._conn
        for phase, work in (("consumer", lambda c: projections._apply_new(c, "bench", events)),
                            ("upkeep", projections.catch_up)):
            began = time.perf_counter()
            conn.execute("BEGIN TRANSACTION")
            work(Timed(conn, times))
            committing = time.perf_counter()
            conn.execute("COMMIT")
            times[f"COMMIT ({phase})"].append((time.perf_counter() - committing) * 1000)
            walls[phase].append((time.perf_counter() - began) * 1000)
    kind = ("local" if args.local else "random") + (" + a verification" if args.verify else "")
    print(f"{args.batches} committed batches of {args.size} new submissions ({kind}), cpu probe {cpu_speed(3):.0f} µs:")
    for phase, spent in walls.items():
        print(f"  {phase}'s transaction: wall p50 {statistics.median(spent):.0f} ms, max {max(spent):.0f} ms")
    print(f"{'ms p50':>8} {'count':>6}  statement")
    for sql, spent in sorted(times.items(), key=lambda item: -sum(item[1])):
        print(f"{statistics.median(spent):8.1f} {len(spent):6}  {sql}")
    store.close()
    copy.unlink()
    Path(f"{copy}.wal").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
