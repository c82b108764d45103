"""Analytics: rebuild rate from the broker, dashboard queries through the gateway under writes, freshness, memory.

One PostgreSQL stack. Set-up through the API (bench.activities.prepare): an organisation, a programme, a
project and volunteers enrolled in it, for the writes and the freshness probes. Then, with the analytics
service stopped, a synthetic history is produced to the broker topics with aiokafka, shaped as the
engine measurement's data (../shared/engine-bench, not imported): 60 organisations, 3 programmes, 300
projects, V volunteers (sex, date of birth, residence skewed over the 25 provinces), A activity events
(a gamma-distributed number per volunteer, 90 % in the volunteer's residence province, 90 % in their home
programme, 80 % in their home project; 90 % verified, 7 % submitted, 3 % rejected) over the last three
years, and a baseline and an endline assessment for 30 % of the volunteers. Then, each with the CPU probe
taken just before it:

- rebuild: `python -m services.analytics.rebuild` (offline, the service stopped) reads both topics from
  the start; events/s as the command reports them. The service is then started on the rebuilt store (it
  resumes its group and skips what the rebuild recorded) and its resident memory read once caught up.
- dashboard queries: each through the gateway with wrk at one connection (warm: a few requests first),
  while a separate process submits `POST /activities` at up to WRITE_RATE a second; p50/p99.
- freshness: the same steady writes; meanwhile one probe at a time: a submission on a day of its own,
  then its verification, each timed from the 201/200 to the answer of `/analytics/hours` filtered to
  that project and day counting it (polled every POLL_SECONDS). The analytics RSS at the end. The
  path broken down per probe event, from the activities service's outbox row (`created_at`, in the
  request's transaction; `published_at`, set once the broker acknowledged it): 2xx → counted splits
  into request tail (created → 2xx, negative: the 2xx comes after), relay (created → published, the
  relay's wake, read, produce and acknowledgement), and published → counted (the broker's delivery to the
  analytics consumer, its batch's store transaction, and the poll that saw it, whose own duration is
  reported beside it).
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import urlencode

import aiohttp
import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.activities import FOCUS, Setup, prepare
from bench.load import Load, run_load
from bench.payloads import PROVINCES, fill
from bench.stack import cpu_speed, gateway_headers, running_stack, settle
from bench.stats import figure, percentile, pivot
from shared.events import (
    ACTIVITIES_TOPIC, ACTIVITY_REJECTED, ACTIVITY_SUBMITTED, ACTIVITY_VERIFIED, ASSESSMENT_RECORDED, CATALOGUE,
    ORGANIZATION_CREATED, PROGRAM_CREATED, PROJECT_CREATED, REGISTRY_TOPIC, VOLUNTEER_REGISTERED, encode_event,
)
from tests.harness import Stack

ORGANIZATIONS = 60
PROGRAMS = 3
PROJECTS = 300
TYPES = sorted(FOCUS)
INSTRUMENT = "soft-skills-v1"
SKILL_ITEMS = ("communication", "teamwork", "problem_solving", "leadership", "digital_literacy")
ASSESSED_SHARE = 0.3
WRITE_RATE = 200  # submissions per second, the target
WRITERS_AT_ONCE = 32  # in flight at most (the gateway caps a key at 64, queries included): a slower service shows as a lower rate
POLL_SECONDS = 0.02
QUERY_CONNECTIONS = 1
PROBE_DAY = 190  # days before today: the probes' own day (the writes use WRITE_DAYS further back)
WRITE_DAYS = range(210, 240)
SEED = 20260101
TARGETS_MS = {"dashboard": 50, "other": 250, "freshness": 1000}
REBUILD_TARGET = 50_000
# The table's columns: `n` is an answer's rows for a query, the probes for freshness.
P50, P99, TARGET, COUNT, WRITES, PROBE, VALUE = "p50 ms", "p99 ms", "target", "n", "writes/s meanwhile", "cpu probe µs", "value"
COLUMNS = (P50, P99, TARGET, COUNT, WRITES, PROBE, VALUE)

# name → (path, query): the six dashboards of issue 17, then other combinations. `{organization}` is
# one of the synthetic organisations (the one with most activities).
DASHBOARDS = {
    "hours by province × month": ("/analytics/hours", {"group_by": "province,month"}),
    "volunteers by province × sex × age band": ("/analytics/volunteers", {"group_by": "province,sex,age_band"}),
    "hours by activity type × quarter": ("/analytics/hours", {"group_by": "activity_type,quarter"}),
    "activities and volunteers by province × programme": ("/analytics/hours", {"group_by": "province,program"}),
    "volunteers by project, one organisation": ("/analytics/volunteers", {"group_by": "project", "organization": "{organization}"}),
    "skills by programme × hours band": ("/analytics/skills", {"group_by": "program,hours_band", "instrument": INSTRUMENT}),
}
OTHERS = {
    "overview": ("/analytics/overview", {}),
    "hours by district × focus area": ("/analytics/hours", {"group_by": "district,focus_area"}),
    "volunteers by organisation × year": ("/analytics/volunteers", {"group_by": "organization,year"}),
    "beneficiaries by province × week": ("/analytics/beneficiaries", {"group_by": "province,week"}),
    "hours by sex × age band × month, status=all": ("/analytics/hours", {"group_by": "sex,age_band,month", "status": "all"}),
}


@dataclass(frozen=True)
class Sizes:
    activities: int
    volunteers: int
    query_seconds: float  # of each query's wrk run
    freshness_seconds: float
    setup_volunteers: int = 200  # real volunteers (API) for the writes and probes

    def __str__(self) -> str:
        return (f"{self.activities:,} activities from {self.volunteers:,} volunteers (synthetic events), "
                f"queries {self.query_seconds:g} s each at {QUERY_CONNECTIONS} connection, freshness {self.freshness_seconds:g} s, "
                f"writes at up to {WRITE_RATE}/s")


SIZES = {
    "1m": Sizes(activities=1_000_000, volunteers=20_000, query_seconds=10, freshness_seconds=60),
    "10m": Sizes(activities=10_000_000, volunteers=200_000, query_seconds=10, freshness_seconds=60),
}
DEFAULT_SIZE = "1m"  # 10m is the size: for a quiet machine
QUICK = Sizes(activities=20_000, volunteers=400, query_seconds=2, freshness_seconds=8, setup_volunteers=50)


# ---- the synthetic history (pure) ----------------------------------------------------------------

def zipf_weights(n: int, exponent: float) -> list[float]:
    """Cumulative weights 1/i^exponent for i = 1..n (for `random.choices(cum_weights=...)`)."""
    total, cumulative = 0.0, []
    for i in range(1, n + 1):
        total += 1.0 / i ** exponent
        cumulative.append(total)
    return cumulative


def entity_id(kind: int, number: int) -> str:
    """A fixed id per synthetic entity (kind 1 organisation, 2 programme, 3 project, 4 volunteer, 5 activity, 6 assessment)."""
    return str(uuid.UUID(int=(0xBE4C << 112) | (kind << 96) | number))


@dataclass(frozen=True)
class Volunteer:
    sex: str
    born: date
    province: str
    project: int  # home project, 0-based
    program: int  # home programme, 0-based


def volunteers(count: int, rng: random.Random) -> list[Volunteer]:
    provinces = zipf_weights(len(PROVINCES), 1.1)
    projects = zipf_weights(PROJECTS, 0.8)
    first, span = date(1990, 6, 1), (date(2014, 1, 1) - date(1990, 6, 1)).days
    sexes = rng.choices(["female", "male", "other", "undisclosed"], weights=[49, 47, 3, 1], k=count)
    homes = rng.choices(range(len(PROVINCES)), cum_weights=provinces, k=count)
    home_projects = rng.choices(range(PROJECTS), cum_weights=projects, k=count)
    return [Volunteer(sexes[i], first + timedelta(days=rng.randrange(span)), PROVINCES[homes[i]], home_projects[i],
                      rng.randrange(PROGRAMS)) for i in range(count)]


def project_organization(project: int) -> int:
    """Each project belongs to exactly one organisation."""
    return project % ORGANIZATIONS


def registry_events(people: list[Volunteer], rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """(topic, value) of the organisations, programmes, projects and volunteers."""
    def event(type_: str, data: dict) -> tuple[str, bytes]:
        return CATALOGUE[type_].topic, encode_event(type_, data["id"], data).value

    for o in range(ORGANIZATIONS):
        yield event(ORGANIZATION_CREATED, {"id": entity_id(1, o), "kind": "ngo", "province_codes": [PROVINCES[o % len(PROVINCES)]]})
    for p in range(PROGRAMS):
        yield event(PROGRAM_CREATED, {"id": entity_id(2, p), "code": f"BENCH-P{p + 1}"})
    for j in range(PROJECTS):
        yield event(PROJECT_CREATED, {"id": entity_id(3, j), "program_id": entity_id(2, j % PROGRAMS),
                                      "organization_id": entity_id(1, project_organization(j))})
    for v, person in enumerate(people):
        yield event(VOLUNTEER_REGISTERED, {
            "id": entity_id(4, v), "organization_id": entity_id(1, project_organization(person.project)), "sex": person.sex,
            "date_of_birth": person.born.isoformat(), "residence_province": person.province})


def activity_data(number: int, volunteer: int, person: Volunteer, day: date, rng: random.Random) -> tuple[str, dict]:
    """The event type and `ActivityChanged` payload (JSON mode) of synthetic activity `number`."""
    province = person.province if rng.random() < 0.9 else rng.choice(PROVINCES)
    program = person.program if rng.random() < 0.9 else rng.randrange(PROGRAMS)
    project = person.project if rng.random() < 0.8 else rng.randrange(PROJECTS)
    activity_type = TYPES[rng.randrange(len(TYPES))]
    hours = rng.randint(1, 16) * 0.5
    status = rng.choices(("verified", "submitted", "rejected"), weights=(90, 7, 3))[0]
    type_ = {"verified": ACTIVITY_VERIFIED, "submitted": ACTIVITY_SUBMITTED, "rejected": ACTIVITY_REJECTED}[status]
    return type_, {
        "id": entity_id(5, number), "volunteer_id": entity_id(4, volunteer), "project_id": entity_id(3, project),
        "program_id": entity_id(2, program), "organization_id": entity_id(1, project_organization(project)),
        "activity_type": activity_type, "focus_area": FOCUS[activity_type], "project_focus_areas": [],
        "date": day.isoformat(), "hours": hours, "approved_hours": hours if status == "verified" else None,
        "location_code": f"{province}01", "beneficiaries": {"female": rng.randrange(6), "male": rng.randrange(5), "other": 0,
                                                            "children": rng.randrange(3)},
        "status": status, "version": 1, "revision": 1 if status == "submitted" else 2,
    }


def activity_events(people: list[Volunteer], count: int, today: date, rng: random.Random,
                    chunk: int = 100_000) -> Iterator[tuple[str, bytes]]:
    """(topic, value) of `count` activity events, streamed (10 M events' bytes do not fit in memory at once)."""
    weights, total = [], 0.0
    for _ in people:
        total += rng.gammavariate(0.7, 1.0)
        weights.append(total)
    span = 3 * 365
    number = 0
    while number < count:
        for v in rng.choices(range(len(people)), cum_weights=weights, k=min(chunk, count - number)):
            type_, data = activity_data(number, v, people[v], today - timedelta(days=1 + rng.randrange(span)), rng)
            yield ACTIVITIES_TOPIC, encode_event(type_, data["id"], data).value
            number += 1


def assessment_events(people: list[Volunteer], today: date, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """A baseline and, a year later, an endline for a share of the volunteers (scores 1-5 per item)."""
    number = 0
    for v in range(len(people)):
        if rng.random() >= ASSESSED_SHARE:
            continue
        for phase, taken_on, lift in (("baseline", today - timedelta(days=700), 0), ("endline", today - timedelta(days=300), 1)):
            scores = {item: min(5, rng.randint(1, 4) + lift * rng.randint(0, 1)) for item in SKILL_ITEMS}
            data = {"id": entity_id(6, number), "volunteer_id": entity_id(4, v), "instrument": INSTRUMENT, "phase": phase,
                    "taken_on": taken_on.isoformat(), "scores": scores, "total": sum(scores.values())}
            number += 1
            yield CATALOGUE[ASSESSMENT_RECORDED].topic, encode_event(ASSESSMENT_RECORDED, data["id"], data).value


def busiest_organization(people: list[Volunteer]) -> str:
    """The organisation whose projects are most volunteers' home (the one queried alone)."""
    counts: dict[int, int] = {}
    for person in people:
        counts[project_organization(person.project)] = counts.get(project_organization(person.project), 0) + 1
    return entity_id(1, max(counts, key=counts.__getitem__))


# ---- producing, rebuilding, waiting ------------------------------------------------------------

async def produce(bootstrap: str, events: Iterator[tuple[str, bytes]], in_flight: int = 20_000) -> int:
    """Send every (topic, value) to the broker; the number sent. Large batches: this is a bulk load."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, linger_ms=20,
                                max_batch_size=512 * 1024, request_timeout_ms=60_000)
    await producer.start()
    sent = 0
    try:
        pending = []
        for topic, value in events:
            pending.append(await producer.send(topic, value))
            sent += 1
            if len(pending) >= in_flight:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


REBUILD_LINE = re.compile(r"^(\w[\w ]*): ([\d,]+) events, ([\d,]+) events/s, ([\d.]+) s")


def rebuild_summary(output: str) -> tuple[int, int, float]:
    """(events, events/s, seconds) from the last progress line the rebuild command printed."""
    for line in reversed(output.splitlines()):
        match = REBUILD_LINE.match(line)
        if match and match.group(1) == "done":
            return int(match.group(2).replace(",", "")), int(match.group(3).replace(",", "")), float(match.group(4))
    raise RuntimeError(f"the rebuild printed no final line:\n{output[-3000:]}")


def rebuild(stack: Stack) -> tuple[int, int, float]:
    env = {**os.environ, **stack.env(), "VMC_ANALYTICS_DATABASE_URL": stack.db_urls["analytics"]}
    out = subprocess.run([sys.executable, "-m", "services.analytics.rebuild"], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the rebuild failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    print(f"  rebuild's last line: {out.stdout.strip().splitlines()[-1][:600]}", flush=True)
    return rebuild_summary(out.stdout)


def caught_up(ready: dict, most: int = 50) -> bool:
    """Whether /ready says the analytics consumer has read the activities topic to within `most` events
    of its end on every partition (a lag is known only once a batch was fetched from the partition)."""
    lags = ready.get("consumers", {}).get("analytics", {}).get("lag", {})
    return any(name.startswith(ACTIVITIES_TOPIC) for name in lags) and all(lag <= most for lag in lags.values())


def wait_caught_up(stack: Stack, setup: Setup, timeout: float) -> float:
    """Seconds until the analytics consumer has caught up (`caught_up`). One activity is submitted first:
    a consumer resuming at the end of the log (the rebuild handed its offsets over) fetches nothing and
    so knows no lag until an event comes. On a day of the steady writes: never on the freshness probes' day,
    where its late arrival would be taken for a probe's (as in the 14:42Z run)."""
    began = time.monotonic()
    body = {"volunteer_id": setup.volunteer_ids[0], "project_id": setup.project_id, "activity_type": TYPES[0],
            "date": (setup.today - timedelta(days=WRITE_DAYS[0])).isoformat(), "hours": 0.25, "location_code": "12",
            "beneficiaries": {"female": 1, "male": 0, "other": 0, "children": 0}}
    answer = httpx.post(f"{stack.api}/activities", json=body, headers=gateway_headers(stack), timeout=60)
    if answer.status_code != 201:
        raise RuntimeError(f"catch-up probe: HTTP {answer.status_code}: {answer.text[:1000]}")
    with httpx.Client(base_url=stack.urls["analytics"], timeout=10) as client:
        while True:
            answer = client.get("/ready")
            if answer.status_code == 200 and caught_up(answer.json()):
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"analytics not caught up after {timeout:.0f} s: {answer.text[:2000]}")
            time.sleep(0.5)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# ---- steady writes in a process of their own ------------------------------------------------------

def write_templates(setup: Setup) -> list[str]:
    """Submission bodies (volunteer × day, taken in turn; `{n}` in the client reference): a quarter hour
    each, days apart from the probes', so no volunteer-day nears the 24-hour rule."""
    return [orjson.dumps({"volunteer_id": v, "project_id": setup.project_id, "activity_type": TYPES[k % len(TYPES)],
                          "date": (setup.today - timedelta(days=day)).isoformat(), "hours": 0.25, "location_code": "12",
                          "beneficiaries": {"female": 2, "male": 1, "other": 0, "children": 1},
                          "client_reference": f"{setup.run}-w{{n}}"}).decode()
            for day in WRITE_DAYS for k, v in enumerate(setup.volunteer_ids)]


def paced_start(i: int, rate: float) -> float:
    """When request i (from 0) is due, seconds after the start, at a steady `rate` per second."""
    return i / rate


async def _write_steadily(url: str, headers: dict, templates: list[str], rate: float, stop, first: int) -> dict:
    at_once = asyncio.Semaphore(WRITERS_AT_ONCE)
    outcome = {"ok": 0, "failed": 0, "first_failure": ""}
    connector = aiohttp.TCPConnector(limit=WRITERS_AT_ONCE)
    async with aiohttp.ClientSession(headers={**headers, "Content-Type": "application/json"}, connector=connector) as session:
        async def post(n: int) -> None:
            try:
                async with session.post(url, data=fill(templates[n % len(templates)], n)) as answer:
                    body = await answer.read()
                    if answer.status == 201:
                        outcome["ok"] += 1
                        return
                    failure = f"{answer.status} {body[:300]!r}"
            except aiohttp.ClientError as exc:
                failure = repr(exc)
            finally:
                at_once.release()
            outcome["failed"] += 1
            outcome["first_failure"] = outcome["first_failure"] or failure

        began = time.monotonic()
        tasks = []
        i = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, paced_start(i, rate) - (time.monotonic() - began)))  # pacing, not synchronisation
            await at_once.acquire()  # when the service falls behind, the rate achieved drops
            tasks.append(asyncio.create_task(post(first + i)))
            i += 1
        await asyncio.gather(*tasks)
        outcome["seconds"] = time.monotonic() - began
    return outcome


def _writer_main(url: str, headers: dict, templates: list[str], rate: float, stop, first: int, conn) -> None:
    conn.send(asyncio.run(_write_steadily(url, headers, templates, rate, stop, first)))
    conn.close()


class SteadyWrites:
    """`POST /activities` at up to `rate` a second from a separate process (its CPU is not the measuring
    process's) until `result()`, which stops it: {"ok", "failed", "first_failure", "seconds"}."""

    def __init__(self, stack: Stack, setup: Setup, rate: float, first: int):
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        self._stop = context.Event()
        self._process = context.Process(target=_writer_main, args=(
            stack.api + "/activities", gateway_headers(stack), write_templates(setup), rate, self._stop, first, send), daemon=True)
        self._process.start()

    def result(self) -> dict:
        self._stop.set()
        outcome = self._receive.recv()
        self._process.join(30)
        return outcome


# ---- the measurements ----------------------------------------------------------------------------

def query_url(stack: Stack, path: str, params: dict, organization: str) -> str:
    query = {name: value.format(organization=organization) for name, value in params.items()}
    return stack.api + path + (f"?{urlencode(query)}" if query else "")


def measure_queries(stack: Stack, setup: Setup, sizes: Sizes, organization: str) -> dict[str, object]:
    figures: dict[str, object] = {}
    queries = [(name, spec, "dashboard") for name, spec in DASHBOARDS.items()] + [(name, spec, "other") for name, spec in OTHERS.items()]
    headers = gateway_headers(stack)
    writes = SteadyWrites(stack, setup, WRITE_RATE, first=0)
    began = time.monotonic()
    with httpx.Client(headers=headers, timeout=120) as client:
        for name, (path, params), kind in queries:
            url = query_url(stack, path, params, organization)
            for _ in range(3):  # warm: the first answers read the store's pages
                answer = client.get(url)
                if answer.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {answer.status_code}: {answer.text[:1000]}")
            rows = len(answer.json()["rows"])
            probe = cpu_speed()
            result = run_load(Load(url, QUERY_CONNECTIONS, sizes.query_seconds, "GET", headers, expect=200))
            if result.failures:
                raise RuntimeError(f"{name}: {result.failures} failed requests, the first: {result.first_failure}")
            figures |= {figure(name, P50): result.p50_ms, figure(name, P99): result.p99_ms, figure(name, TARGET): TARGETS_MS[kind],
                        figure(name, COUNT): rows, figure(name, PROBE): probe}
            print(f"  {name}: {rows} rows, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms (cpu probe {probe:.0f} µs)", flush=True)
    elapsed = time.monotonic() - began
    outcome = writes.result()
    rate = outcome["ok"] / outcome["seconds"]
    figures |= {figure(name, WRITES): rate for name, _, _ in queries}
    figures[figure("failed writes during the queries", VALUE)] = outcome["failed"]
    print(f"  writes meanwhile: {rate:.0f}/s achieved of {WRITE_RATE}/s over {outcome['seconds']:.0f} s "
          f"(queries took {elapsed:.0f} s); failed {outcome['failed']} {outcome['first_failure']}", flush=True)
    return figures


def _counted(client: httpx.Client, params: dict) -> int:
    answer = client.get("/analytics/hours", params=params)
    if answer.status_code != 200:
        raise RuntimeError(f"freshness poll: HTTP {answer.status_code}: {answer.text[:1000]}")
    rows = answer.json()["rows"]
    return rows[0]["activities"] if rows else 0


class FreshnessTimeout(RuntimeError):
    """A probe not counted in time: the run stops probing and reports where events were waiting."""


def _stalled(stack: Stack, exc: FreshnessTimeout) -> dict[str, object]:
    """Where the events were when a probe timed out: the activities outbox's unpublished rows (the relay
    behind) and the analytics consumer's lag (the consumer behind)."""
    async def unpublished() -> int:
        conn = await asyncpg.connect(stack.db_urls["activities"].replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
        try:
            return await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        finally:
            await conn.close()

    lag = httpx.get(f"{stack.urls['analytics']}/ready", timeout=10).json().get("consumers", {}).get("analytics", {}).get("lag", {})
    backlog = asyncio.run(unpublished())
    print(f"  {exc}; activities outbox unpublished: {backlog}; analytics lag: {lag}", flush=True)
    return {figure("freshness: a probe not counted within 60 s; outbox rows unpublished then", VALUE): backlog,
            figure("freshness: a probe not counted within 60 s; analytics consumer lag then", VALUE): sum(lag.values())}


@dataclass
class Probe:
    """One probe event: when its 2xx came and when the figure first counted it (wall clock, seconds), and
    how long the poll that saw it took."""

    activity_id: str
    event_type: str
    answered: float
    counted: float = 0.0
    last_poll: float = 0.0


def _until_counted(client: httpx.Client, params: dict, expected: int, probe: Probe, timeout: float = 60) -> float:
    """Seconds from now until the figure counts `expected` activities (the caller's clock started at the
    2xx); notes in `probe` when, and how long the poll that saw it took."""
    began = time.perf_counter()
    while True:
        polled = time.perf_counter()
        if _counted(client, params) >= expected:
            probe.counted, probe.last_poll = time.time(), time.perf_counter() - polled
            return time.perf_counter() - began
        if time.perf_counter() - began > timeout:
            raise FreshnessTimeout(f"freshness: {expected} activities not counted after {timeout:.0f} s ({params})")
        time.sleep(POLL_SECONDS)  # the poll's resolution, not a synchronisation


def outbox_times(url: str, probes: list[Probe]) -> dict[tuple[str, str], tuple[float, float]]:
    """(activity id, event type) → (created_at, published_at) of the probes' events in the activities
    service's outbox (epoch seconds)."""
    async def read() -> list:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
        try:
            return await conn.fetch("SELECT key, value, created_at, published_at FROM outbox WHERE key = ANY($1::text[])",
                                    list({p.activity_id for p in probes}))
        finally:
            await conn.close()

    times = {}
    for key, value, created, published in asyncio.run(read()):
        if published is not None:
            times[(key, orjson.loads(value)["type"])] = (created.timestamp(), published.timestamp())
    return times


def freshness_legs(probes: list[Probe], times: dict[tuple[str, str], tuple[float, float]]) -> dict[str, list[float]]:
    """Per leg, the probes' milliseconds (probes whose outbox row was not found are left out)."""
    legs: dict[str, list[float]] = {"request tail (outbox row → 2xx)": [], "relay (outbox row → broker ack)": [],
                                    "broker ack → counted": [], "the poll that saw it": []}
    for probe in probes:
        if not probe.counted or (probe.activity_id, probe.event_type) not in times:
            continue
        created, published = times[(probe.activity_id, probe.event_type)]
        for leg, seconds in zip(legs, (probe.answered - created, published - created, probe.counted - published,
                                       probe.last_poll)):
            legs[leg].append(seconds * 1000)
    return legs


def measure_freshness(stack: Stack, setup: Setup, sizes: Sizes) -> dict[str, object]:
    day = (setup.today - timedelta(days=PROBE_DAY)).isoformat()
    mine = {"project": setup.project_id, "from": day, "to": day}
    submitted: list[float] = []
    verified: list[float] = []
    probes: list[Probe] = []
    stalled: dict[str, object] = {}
    probe = cpu_speed()
    writes = SteadyWrites(stack, setup, WRITE_RATE, first=5_000_000)
    with httpx.Client(base_url=stack.api, headers=gateway_headers(stack), timeout=60) as client:
        all_before = _counted(client, {**mine, "status": "all"})
        verified_before = _counted(client, mine)
        began = time.monotonic()
        while time.monotonic() - began < sizes.freshness_seconds:
            n = len(submitted)
            body = {"volunteer_id": setup.volunteer_ids[n % len(setup.volunteer_ids)], "project_id": setup.project_id,
                    "activity_type": TYPES[0], "date": day, "hours": 0.25, "location_code": "12",
                    "beneficiaries": {"female": 1, "male": 1, "other": 0, "children": 0}}
            answer = client.post("/activities", json=body)
            if answer.status_code != 201:
                raise RuntimeError(f"freshness probe: HTTP {answer.status_code}: {answer.text[:1000]}")
            activity_id = answer.json()["id"]
            probes.append(Probe(activity_id, ACTIVITY_SUBMITTED, time.time()))
            try:
                submitted.append(_until_counted(client, {**mine, "status": "all"}, all_before + n + 1, probes[-1]))
            except FreshnessTimeout as exc:
                stalled = _stalled(stack, exc)
                break
            answer = client.post(f"/activities/{activity_id}/verify", json={})
            if not answer.is_success:
                raise RuntimeError(f"freshness probe's verification: HTTP {answer.status_code}: {answer.text[:1000]}")
            probes.append(Probe(activity_id, ACTIVITY_VERIFIED, time.time()))
            try:
                verified.append(_until_counted(client, mine, verified_before + n + 1, probes[-1]))
            except FreshnessTimeout as exc:
                stalled = _stalled(stack, exc)
                break
    outcome = writes.result()
    rate = outcome["ok"] / outcome["seconds"]
    figures: dict[str, object] = {}
    for name, values in (("freshness: submission", submitted), ("freshness: verification", verified)):
        if not values:
            continue
        figures |= {figure(name, P50): percentile(values, 50) * 1000, figure(name, P99): percentile(values, 99) * 1000,
                    figure(name, TARGET): TARGETS_MS["freshness"], figure(name, COUNT): len(values), figure(name, WRITES): rate,
                    figure(name, PROBE): probe}
    for leg, values in freshness_legs(probes, outbox_times(stack.db_urls["activities"], probes)).items():
        if values:
            name = f"freshness leg: {leg}"
            figures |= {figure(name, P50): percentile(values, 50), figure(name, P99): percentile(values, 99),
                        figure(name, COUNT): len(values), figure(name, PROBE): probe}
    figures[figure("failed writes during freshness", VALUE)] = outcome["failed"]
    figures |= stalled
    print(f"  writes meanwhile: {rate:.0f}/s achieved of {WRITE_RATE}/s; failed {outcome['failed']} {outcome['first_failure']}", flush=True)
    return figures


def load_history(stack: Stack, setup: Setup, sizes: Sizes) -> tuple[str, dict[str, object]]:
    """Produce the synthetic history with the service stopped, rebuild, start the service on the new
    store; the organisation queried alone and the figures of the load."""
    rng = random.Random(SEED)
    people = volunteers(sizes.volunteers, rng)
    today = date.today()
    stack.stop_part("analytics")

    def history() -> Iterator[tuple[str, bytes]]:
        yield from registry_events(people, rng)
        yield from assessment_events(people, today, rng)
        yield from activity_events(people, sizes.activities, today, rng)

    began = time.monotonic()
    sent = asyncio.run(produce(stack.broker.bootstrap, history()))
    print(f"  produced {sent:,} events in {time.monotonic() - began:.0f} s", flush=True)
    settle(stack)
    probe = cpu_speed()
    events, rate, seconds = rebuild(stack)
    print(f"  rebuild: {events:,} events in {seconds:.0f} s, {rate:,} events/s (cpu probe {probe:.0f} µs)", flush=True)
    stack.start_part("analytics")
    stack.wait_ready("analytics", "/ready", 120)
    # The service resumes at the offsets the rebuild handed over (were they not, it would re-read the log).
    catch_up = wait_caught_up(stack, setup, timeout=600 + sizes.activities / 2000)
    memory = rss_mib(stack.procs["analytics"].pid)
    print(f"  service caught up {catch_up:.0f} s after it started; RSS {memory:.0f} MiB", flush=True)
    return busiest_organization(people), {
        figure("rebuild: events", VALUE): events, figure("rebuild: seconds", VALUE): seconds,
        figure("rebuild: events/s", VALUE): rate, figure("rebuild: events/s", TARGET): REBUILD_TARGET, figure("rebuild: events/s", PROBE): probe,
        figure("service on the rebuilt store: seconds to catch up", VALUE): catch_up,
        figure("analytics RSS MiB after the load", VALUE): memory,
    }


def run(quick: bool = False, size: str = DEFAULT_SIZE) -> dict[str, object]:
    sizes = QUICK if quick else SIZES[size]
    print(f"sizes: {sizes}", flush=True)
    with running_stack("postgresql") as stack:
        setup = prepare(stack, sizes.setup_volunteers)
        organization, loaded = load_history(stack, setup, sizes)
        # Queries first: the table's first row then has every column but `value`, in order.
        figures = measure_queries(stack, setup, sizes, organization)
        figures |= measure_freshness(stack, setup, sizes)
        figures |= loaded
        figures[figure("analytics RSS MiB after freshness", VALUE)] = rss_mib(stack.procs["analytics"].pid)
    return in_columns(figures)


def in_columns(figures: dict[str, object]) -> dict[str, object]:
    """The figures with each row's columns in `COLUMNS` order (rows keep theirs): the table's columns
    come in that order as far as its first row has them (the others follow, in first-seen order)."""
    rows, columns, cells = pivot("analytics", figures)
    ordered = sorted(columns, key=lambda c: COLUMNS.index(c) if c in COLUMNS else len(COLUMNS))
    return {figure(row, column): cells[(row, column)] for row in rows for column in ordered if (row, column) in cells}
