"""Activities through the gateway against the machine's ceiling: batch ingestion and single submissions.

PostgreSQL and SQLite side by side, each on a fresh stack. Set-up through the API with the admin key:
an organisation, a programme and a project, volunteers (one CSV import) each enrolled in the project,
then a wait until the activities service's projection knows every enrolment (the steady state: no
entry needs the registry asked). Then, each turn with the CPU probe taken just before it:

- batch ingestion: `POST /activities/batch`, one client, batches of 1,000 items, each item a new entry
  with a client reference, the outbox row of its event in the same transaction; against the same rows
  and outbox rows written raw into a fresh database with the service's migrations (bench.ceiling:
  asyncpg COPY, or sqlite3 executemany, one transaction per batch). Target: at least 0.5 of it.
- single submissions: `POST /activities` at 32 clients, against one raw transaction of one row and its
  outbox row at 32 concurrent tasks. Target: at least 0.35 of it.

Volunteer-days never collide: batch item i is volunteer i mod V on the i div V-th day before today
(Asia/Phnom_Penh), 1.5 hours; single submissions go to day 200 before today, a quarter hour each,
volunteer n mod V for request n, so no day approaches the 24-hour rule and no two concurrent requests
wait for the same day's lock.
"""
from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import httpx
import orjson
from sqlalchemy import func, select

from bench import ceiling
from bench.load import Load, run_load
from bench.payloads import fill, volunteer_csv
from bench.stack import DATABASES, gateway_headers, probed, running_stack
from bench.stats import format_table
from services.activities.activities.models import Activity
from services.activities.activities.service import activity_event, local_today
from services.activities.activity_types.models import TAXONOMY
from services.activities.migrations import MIGRATIONS
from services.activities.registry_view.models import EnrollmentView
from shared.caller import GDY_ORGANIZATION_ID
from shared.db import make_engine
from shared.events import ACTIVITY_SUBMITTED, CloudEvent
from tests.factories import organization_body, program_body, project_body
from tests.harness import Stack

CLIENTS = 32
BATCH = 1000
WARMUP_SECONDS = 1
TARGETS = {"batch ingestion": 0.5, "single submissions": 0.35}
SINGLE_DAY = 200  # days before today: apart from the batches' days
FOCUS = {code: focus for code, _, _, focus in TAXONOMY}
TYPES = list(FOCUS)[:6]
PROJECT_FOCUS = ["climate_change", "environment", "digital_literacy"]
ENROLMENTS_AT_ONCE = 16


@dataclass(frozen=True)
class Sizes:
    activities: int
    volunteers: int
    seconds: float  # of each single-submission turn

    def __str__(self) -> str:
        return (f"{self.activities:,} activities in batches of {BATCH:,}, {self.volunteers:,} volunteers; "
                f"single submissions {self.seconds:g} s at {CLIENTS} clients (after {WARMUP_SECONDS} s of warm-up)")


FULL = Sizes(activities=100_000, volunteers=1000, seconds=10)
QUICK = Sizes(activities=10_000, volunteers=200, seconds=2)


@dataclass
class Setup:
    """What the activities refer to, as the registry made it."""

    run: str
    today: date  # Asia/Phnom_Penh
    organization_id: str
    program_id: str
    project_id: str
    volunteer_ids: list[str]
    start: date = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.today - timedelta(days=400)


def batch_item(setup: Setup, i: int) -> dict:
    """The i-th entry of the batches (a wire body of `ActivityCreate`)."""
    volunteers = len(setup.volunteer_ids)
    item = {
        "volunteer_id": setup.volunteer_ids[i % volunteers], "project_id": setup.project_id,
        "activity_type": TYPES[i % len(TYPES)], "date": (setup.today - timedelta(days=1 + i // volunteers)).isoformat(),
        "hours": 1.5, "location_code": "12", "beneficiaries": {"female": 2 + i % 7, "male": i % 5, "other": 0, "children": i % 3},
        "client_reference": f"{setup.run}-b{i:07d}",
    }
    if i % 4 == 0:
        item["description"] = f"Bench activity {i}: a session at the commune hall"
    return item


def single_templates(setup: Setup) -> list[str]:
    """One body template per volunteer (the load generator takes them in turn); `{n}` in the client reference."""
    day = (setup.today - timedelta(days=SINGLE_DAY)).isoformat()
    return [orjson.dumps({"volunteer_id": v, "project_id": setup.project_id, "activity_type": TYPES[k % len(TYPES)],
                          "date": day, "hours": 0.25, "location_code": "12",
                          "beneficiaries": {"female": 3, "male": 2, "other": 0, "children": 1},
                          "client_reference": f"{setup.run}-s{{n}}"}).decode()
            for k, v in enumerate(setup.volunteer_ids)]


def single_items(setup: Setup, first: int, count: int) -> list[dict]:
    """The bodies the load generator sends as requests `first` + 1 on (what the ceiling writes for them)."""
    templates = single_templates(setup)
    return [orjson.loads(fill(templates[n % len(templates)], n)) for n in range(first + 1, first + 1 + count)]


def stored_rows(setup: Setup, items: Sequence[dict]) -> tuple[list[dict], list[CloudEvent]]:
    """The rows and events the service stores for these items, submitted by the admin key (the national body)."""
    rows = []
    for item in items:
        people = item["beneficiaries"]
        rows.append(Activity.model_construct(  # the defaults without validation: 0.05 ms a row, not 0.13
            volunteer_id=uuid.UUID(item["volunteer_id"]), project_id=uuid.UUID(setup.project_id),
            program_id=uuid.UUID(setup.program_id), organization_id=uuid.UUID(setup.organization_id),
            volunteer_organization_id=uuid.UUID(GDY_ORGANIZATION_ID), submitter_organization_id=uuid.UUID(GDY_ORGANIZATION_ID),
            activity_type=item["activity_type"], focus_area=FOCUS[item["activity_type"]], project_focus_areas=PROJECT_FOCUS,
            date=date.fromisoformat(item["date"]), hours=item["hours"], location_code=item["location_code"],
            beneficiaries_female=people["female"], beneficiaries_male=people["male"], beneficiaries_other=people["other"],
            beneficiaries_children=people["children"], description=item.get("description"), evidence_urls=[],
            client_reference=item["client_reference"],
        ).model_dump())
    return rows, [activity_event(ACTIVITY_SUBMITTED, row) for row in rows]


# ---- set-up ------------------------------------------------------------------------------------

def _created(answer: httpx.Response) -> dict:
    if answer.status_code != 201:
        raise RuntimeError(f"set-up: {answer.request.method} {answer.request.url.path}: HTTP {answer.status_code}: {answer.text[:1000]}")
    return answer.json()


def prepare(stack: Stack, volunteers: int) -> Setup:
    """Organisation, programme, project, volunteers and their enrolments, known to the activities service."""
    run = secrets.token_hex(3)
    today = local_today()
    with httpx.Client(base_url=stack.api, headers=gateway_headers(stack), timeout=300) as client:
        org = _created(client.post("/organizations", json=organization_body()))
        program = _created(client.post("/programs", json=program_body()))
        setup = Setup(run, today, org["id"], program["id"], "", [])
        project = _created(client.post("/projects", json=project_body(
            program["id"], org["id"], focus_areas=PROJECT_FOCUS, location_codes=["12"],
            start_date=setup.start.isoformat(), end_date=None)))
        setup.project_id = project["id"]
        answer = client.post("/volunteers/import", content=volunteer_csv(volunteers, run), headers={"Content-Type": "text/csv"})
        summary = answer.json() if answer.is_success else {}
        if summary.get("created") != volunteers:
            raise RuntimeError(f"set-up: the volunteer import: HTTP {answer.status_code}: {answer.text[:1000]}")
        setup.volunteer_ids = [item["id"] for item in summary["items"]]
    asyncio.run(_enrol(stack, setup))
    _wait_for_projection(stack.db_urls["activities"], volunteers)
    return setup


async def _enrol(stack: Stack, setup: Setup) -> None:
    body = {"project_id": setup.project_id, "started_on": setup.start.isoformat()}
    at_once = asyncio.Semaphore(ENROLMENTS_AT_ONCE)
    async with httpx.AsyncClient(base_url=stack.api, headers=gateway_headers(stack), timeout=300) as client:
        async def enrol(volunteer_id: str) -> None:
            async with at_once:
                _created(await client.post(f"/volunteers/{volunteer_id}/enrollments", json=body))

        await asyncio.gather(*(enrol(v) for v in setup.volunteer_ids))


def _wait_for_projection(url: str, enrolments: int, timeout: float = 300) -> None:
    async def known() -> int:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(select(func.count()).select_from(EnrollmentView))
        finally:
            await engine.dispose()

    deadline = time.monotonic() + timeout
    while (count := asyncio.run(known())) < enrolments:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the activities service knows {count} of {enrolments} enrolments after {timeout:.0f} s")
        time.sleep(0.5)


# ---- the turns ---------------------------------------------------------------------------------

def post_batches(stack: Stack, bodies: Sequence[bytes], sizes: Sequence[int], dry_run: bool = False) -> list[float]:
    """Send the batches one after the other; the seconds each took. Every item must be taken."""
    times = []
    params = {"dry_run": "true"} if dry_run else {}
    with httpx.Client(base_url=stack.api, headers={**gateway_headers(stack), "Content-Type": "application/json"},
                      timeout=900) as client:
        for body, size in zip(bodies, sizes):
            began = time.perf_counter()
            answer = client.post("/activities/batch", content=body, params=params)
            times.append(time.perf_counter() - began)
            summary = answer.json() if answer.is_success else {}
            if summary.get("created") != size or summary.get("errors"):
                problems = [item for item in summary.get("items", []) if item.get("status") == "error"][:3]
                raise RuntimeError(f"a batch: HTTP {answer.status_code}, {({k: summary.get(k) for k in ('created', 'ignored', 'errors')})}; "
                                   f"first problems: {problems or answer.text[:1000]}")
    return times


def batch_ingestion(stack: Stack, database: str, setup: Setup, sizes: Sizes, ceiling_url: str) -> dict[str, object]:
    items = [batch_item(setup, i) for i in range(sizes.activities)]
    batches = [items[start:start + BATCH] for start in range(0, len(items), BATCH)]
    bodies = [orjson.dumps({"items": batch}) for batch in batches]
    counts = [len(batch) for batch in batches]
    post_batches(stack, bodies[:1], counts[:1], dry_run=True)  # warms every path without storing anything
    measured, probe = probed(stack, lambda: ceiling.batch_result(sizes.activities, post_batches(stack, bodies, counts)))
    rows, events = stored_rows(setup, items)
    # The wait lets the batches' events be relayed and projected first, off the ceiling's time.
    raw, ceiling_probe = probed(stack, lambda: ceiling.batch_result(
        sizes.activities, ceiling.bulk(ceiling_url, Activity.__table__, rows, events, BATCH)), settle_timeout=300)
    return ceiling.side_by_side(f"{database}: batch ingestion", "per second", measured, probe, raw, ceiling_probe,
                                ceiling.method(ceiling_url, bulk=True), TARGETS["batch ingestion"])


def single_submissions(stack: Stack, database: str, setup: Setup, sizes: Sizes, ceiling_url: str) -> dict[str, object]:
    headers = {**gateway_headers(stack), "Content-Type": "application/json"}
    templates = single_templates(setup)
    for first, seconds in ((0, WARMUP_SECONDS), (1_000_000, sizes.seconds)):  # the warm-up, then the figures
        measured, probe = probed(stack, lambda: run_load(
            Load(stack.api + "/activities", CLIENTS, seconds, "POST", headers, templates, first)))
        if measured.failures:
            raise RuntimeError(f"single submissions on {database}: {measured.failures} failed requests, "
                               f"the first: {measured.first_failure}")
    rows, events = stored_rows(setup, single_items(setup, 2_000_000, ceiling.rows_for(sizes.seconds)))
    raw, ceiling_probe = probed(stack, lambda: ceiling.singles(
        ceiling_url, Activity.__table__, rows, events, CLIENTS, sizes.seconds))
    return ceiling.side_by_side(f"{database}: single submissions", "per second", measured, probe, raw, ceiling_probe,
                                ceiling.method(ceiling_url, bulk=False), TARGETS["single submissions"])


def run(quick: bool = False) -> dict[str, object]:
    sizes = QUICK if quick else FULL
    print(f"sizes: {sizes}", flush=True)
    figures: dict[str, object] = {}
    for database in DATABASES:
        with running_stack(database) as stack:
            setup = prepare(stack, sizes.volunteers)
            ceiling_url = ceiling.fresh_database(stack, "ceiling", MIGRATIONS)
            for turn in (batch_ingestion, single_submissions):
                measured = turn(stack, database, setup, sizes, ceiling_url)
                # Printed as soon as measured: a later turn that fails (the shared server out of
                # connections, say) does not take these figures with it.
                print(format_table("activities", measured), flush=True)
                figures |= measured
    return figures
