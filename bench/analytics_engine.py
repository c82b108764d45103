"""Analytics engine time, in-process: the dashboard statements on a synthetic store, design 2 against design 3.

No broker, no gateway, no service: a store of N activities is built through the rebuild's bulk writer
(`services.analytics.rebuild.bulk_writer`, the same path `python -m services.analytics.rebuild` takes)
from the same synthetic history `bench/analytics.py` produces to the broker (same generator, same seed).
Then each statement of the analytics endpoints for the issue's dashboards and the other groupings runs
warm, RUNS times, on the raw rows (design 2: `queries.figures_sql(..., rollups=False)`) and as the router
answers it (design 3: from a rollup when one covers the question); median and p99 of wall and of the
process's CPU (DuckDB's threads included), with the CPU probe (`bench.stack.cpu_speed`) beside each.
The two answers are compared: a figure differing between them fails the run. Then the live batch cost:
batches of 10 and 500 submissions applied through the consumer's path (`projections._apply_new`), each
in a transaction rolled back, so every batch meets the same store.

    .venv/bin/python -m bench.analytics_engine --activities 1000000 --volunteers 20000 [--store PATH]

`--store PATH` keeps the built store (and reuses it when the file exists: the build of 10 M takes minutes).
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import orjson

from bench import analytics
from bench.stack import cpu_speed
from services.analytics import queries
from services.analytics.figures import parse_question
from services.analytics import projections
from services.analytics.projections import _apply_new, catch_up
from services.analytics.queries import REPORTS
from services.analytics.rebuild import Batch, bulk_writer, finish
from services.analytics.store import AnalyticsStore
from shared.caller import CallerContext
from shared.events import ACTIVITY_SUBMITTED, encode_event, parse_event

RUNS = 30
BATCH_EVENTS = 50_000
NATIONAL = CallerContext(key_id="bench", organization_id=None, scopes=frozenset({"analytics:read"}), national=True)


def build(store: AnalyticsStore, activities: int, volunteers: int, today: date) -> tuple[str, float]:
    """Fill `store` with the synthetic history through the bulk writer; the busiest organisation's id
    and the seconds it took."""
    rng = random.Random(analytics.SEED)
    people = analytics.volunteers(volunteers, rng)
    write = bulk_writer(store)
    began = time.monotonic()
    batch = Batch()
    events = (*analytics.registry_events(people, rng), *analytics.assessment_events(people, today, rng))
    for _, value in events:
        batch.add(value)
    for _, value in analytics.activity_events(people, activities, today, rng):
        batch.add(value)
        if len(batch) >= BATCH_EVENTS:
            write(batch)
            batch = Batch()
    write(batch)
    asyncio.run(finish(store))
    return analytics.busiest_organization(people), time.monotonic() - began


def questions(organization: str) -> dict[str, queries.Question]:
    """The bench's dashboards and other groupings as the endpoints check them."""
    found = {}
    for name, (path, params) in {**analytics.DASHBOARDS, **analytics.OTHERS}.items():
        pairs = [(k, v.format(organization=organization)) for k, v in params.items()]
        found[name] = parse_question(REPORTS[path.rsplit("/", 1)[1]], pairs, NATIONAL)
    return found


def statement_of(question: queries.Question, rollups: bool) -> Callable[[int | None], queries.Statement]:
    if question.report.name == "skills":
        return lambda keys: queries.skills_sql(question)
    return lambda keys: queries.figures_sql(question, volunteer_keys=keys, rollups=rollups)


def timed(store: AnalyticsStore, build_statement, runs: int) -> tuple[list[float], list[float], list[tuple]]:
    """Wall and CPU milliseconds of `runs` warm runs (after two), and the rows of the last."""
    for _ in range(2):
        store.query_keyed(build_statement)
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        statement, rows = store.query_keyed(build_statement)
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return walls, cpus, rows


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]


def cells(question: queries.Question, build_statement, rows: list[tuple]) -> list[dict]:
    statement = build_statement(None)
    return queries.figures_of(question, statement.columns, rows).rows


def measure_queries(store: AnalyticsStore, organization: str, runs: int) -> None:
    print(f"{'statement':50} {'design':>6} {'route':>18} {'wall p50':>9} {'p99':>7} {'cpu p50':>8} {'p99':>7} "
          f"{'rows':>6} {'probe µs':>8}")
    for name, question in questions(organization).items():
        answers = {}
        for design, rollups in (("2", False), ("3", True)):
            probe = cpu_speed(3)
            build_statement = statement_of(question, rollups)
            walls, cpus, rows = timed(store, build_statement, runs)
            answers[design] = cells(question, build_statement, rows)
            route = queries.rollup_for(question).name if rollups and queries.rollup_for(question) else "raw rows"
            print(f"{name:50} {design:>6} {route:>18} {statistics.median(walls):9.1f} {p99(walls):7.1f} "
                  f"{statistics.median(cpus):8.1f} {p99(cpus):7.1f} {len(answers[design]):6} {probe:8.0f}", flush=True)
        if answers["2"] != answers["3"]:
            raise SystemExit(f"{name}: design 3 answers differently from design 2")


def submission(volunteer, project: tuple, day: date) -> tuple:
    """A new submission of two hours by `volunteer` in `project` (id, programme, organisation) on `day`, as
    the consumer receives it: (event, payload)."""
    project_id, program, organization = project
    data = {"id": str(uuid.uuid4()), "volunteer_id": str(volunteer), "project_id": str(project_id),
            "program_id": str(program), "organization_id": str(organization), "activity_type": analytics.TYPES[0],
            "focus_area": analytics.FOCUS[analytics.TYPES[0]], "project_focus_areas": [],
            "date": day.isoformat(), "hours": 2.0, "approved_hours": None,
            "location_code": "1201", "beneficiaries": {"female": 1, "male": 0, "other": 0, "children": 0},
            "status": "submitted", "version": 1, "revision": 1}
    return event_of(ACTIVITY_SUBMITTED, data)


def event_of(kind: str, data: dict) -> tuple:
    """The event of type `kind` carrying `data` (with its `id`) as the consumer receives it: (event, payload)."""
    event = parse_event(encode_event(kind, data["id"], data).value)
    return event, event.payload()


def submissions(store: AnalyticsStore, count: int, today: date, rng: random.Random) -> list:
    """`count` new submissions by existing volunteers, as the consumer receives them."""
    volunteers = [row[0] for row in store.query("SELECT id FROM volunteer WHERE merged_into IS NULL LIMIT 500")]
    projects = store.query("SELECT id, program_id, organization_id FROM project LIMIT 50")
    return [submission(rng.choice(volunteers), rng.choice(projects), today - timedelta(days=rng.randrange(1, 1000)))
            for _ in range(count)]


def measure_batches(store: AnalyticsStore, today: date, runs: int) -> None:
    """Batches applied as the live consumer applies them (its transaction, then the upkeep's `catch_up`, here in
    one transaction), design 3 (rollups kept) and design 2 (the same code with `refresh_rollups` left out),
    alternately, each rolled back."""
    rng = random.Random(1)
    conn = store._conn
    keep = projections.refresh_rollups
    for size in (10, 500):
        times: dict[str, tuple[list[float], list[float]]] = {"2": ([], []), "3": ([], [])}
        for _ in range(runs):
            for design in ("3", "2"):
                events = submissions(store, size, today, rng)
                projections.refresh_rollups = keep if design == "3" else (lambda conn, rows: None)
                wall, cpu = time.perf_counter(), time.process_time()
                conn.execute("BEGIN TRANSACTION")
                try:
                    _apply_new(conn, "analytics", events)
                    catch_up(conn)
                finally:
                    conn.execute("ROLLBACK")
                    projections.refresh_rollups = keep
                times[design][0].append((time.perf_counter() - wall) * 1000)
                times[design][1].append((time.process_time() - cpu) * 1000)
        for design, (walls, cpus) in sorted(times.items()):
            print(f"live batch of {size:>3} submissions, design {design}: wall p50 {statistics.median(walls):.1f} "
                  f"p99 {p99(walls):.1f} ms, cpu p50 {statistics.median(cpus):.1f} p99 {p99(cpus):.1f} ms "
                  f"(cpu probe {cpu_speed(3):.0f} µs)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--activities", type=int, default=1_000_000)
    parser.add_argument("--volunteers", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--store", help="keep the built store in this file (reused if it exists)")
    args = parser.parse_args(argv)
    today = date(2026, 12, 1)
    path = args.store or ":memory:"
    reuse = args.store is not None and Path(args.store).exists()
    store = AnalyticsStore(path)
    organization_file = Path(f"{args.store}.organization") if args.store else None
    if reuse and organization_file and organization_file.exists():
        organization = organization_file.read_text().strip()
        # The rollups recomputed whole, as the rebuild's end does: the store may predate a table of cells.
        began = time.monotonic()
        store.write(lambda conn: projections.refresh_rollups(conn, None))
        print(f"store {path} reused; its rollups recomputed in {time.monotonic() - began:.1f} s", flush=True)
    else:
        print(f"building {args.activities:,} activities from {args.volunteers:,} volunteers (cpu probe {cpu_speed(3):.0f} µs)",
              flush=True)
        organization, seconds = build(store, args.activities, args.volunteers, today)
        print(f"built in {seconds:.0f} s (the rollups, computed at the end, included)", flush=True)
        if organization_file:
            organization_file.write_text(organization)
    counts = {table: store.query(f"SELECT count(*) FROM {table}")[0][0] for table in ("activity", "volunteer", *queries.ROLLUP_TABLES)}
    print(orjson.dumps(counts).decode(), flush=True)
    measure_queries(store, organization, args.runs)
    measure_batches(store, today, min(args.runs, 10))
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
