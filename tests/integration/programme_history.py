"""A varied programme history written through the gateway, for tests that compare analytics answers.

Three organisations (one below another) run three projects of two programmes in four provinces and
three districts; 27 volunteers of every sex, aged 11 to 36 on their activity dates (a 17-year-old turns
18 in the middle of the year), log activities of five types from February to November 2026. Entries are
verified in full or in part and rejected (logged and decided in bulk), left submitted, voided after a
verification or while submitted, corrected before a decision (one by one); one duplicate volunteer is
merged into another and one is erased, both after logging, and two have their sex, residence, date of
birth or organisation changed afterwards. Soft-skills and digital-literacy assessments (baseline and
endline, one replaced) give the skills figures, with volunteers in every verified-hours band. Everything
is drawn from a fixed seed, so two runs write the same figures (only ids and times differ).
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from shared.caller import GDY_ORGANIZATION_ID
from tests.factories import create_enrollment, create_org, create_program, create_project, register
from tests.integration.activity_factories import Setting, activity_body, log

DISTRICTS = (("1201", "Chamkar Mon", "ចំការមន", "12"), ("1202", "Doun Penh", "ដូនពេញ", "12"),
             ("1701", "Angkor Chum", "អង្គរជុំ", "17"))
TYPES = ("tree_planting", "clean_up", "education_support", "digital_literacy_training_given", "community_meeting")
SEXES = ("female", "male", "female", "other", "male", "undisclosed")
# Dates of birth: 11, 15, 16, 17 turning 18 on 1 June 2026, then adults of 23, 25, 28 and 36.
BIRTHS = ("2014-09-01", "2011-01-20", "2009-09-09", "2008-06-01", "2003-03-03", "2000-12-31", "1998-07-07",
          "1990-01-01")
ADULT_FROM = "2008-06-01"  # born before this date: 18 or more today, no guardian needed
DAYS = tuple(f"2026-{month:02d}-{day:02d}" for month in range(2, 12) for day in (3, 10, 17, 24))
HOURS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
SOFT = ("communication", "teamwork", "leadership", "problem_solving", "critical_thinking", "self_confidence")
DIGITAL = ("device_basics", "information_search", "online_safety", "digital_communication", "content_creation")
CONCURRENCY = 6
RETRIES = 5


@dataclass
class Unit:
    """An organisation running one project, with the places its entries happen in."""

    org: dict
    project: dict
    places: tuple[str, ...]
    volunteers: list[dict] = field(default_factory=list)


@dataclass
class History:
    """What was written: the units, the programme codes, and counts the figures must show."""

    units: dict[str, Unit]
    program_codes: list[str]
    activities: int = 0  # entries submitted or verified (what status=all counts)
    verified: int = 0


async def ok(send: Callable[[], Awaitable[httpx.Response]]) -> dict:
    """Send a request until it is not a 503 (a client's retries: the activities service answers 503 when
    the registry is slow to check a reference, which a loaded machine makes likely); it must succeed."""
    for attempt in range(1, RETRIES + 1):
        response = await send()
        if response.status_code != 503:
            break
        await asyncio.sleep(0.2 * attempt)  # a client's back-off before a retry, not a wait for a condition
    assert response.status_code in (200, 201, 204), f"{response.request.method} {response.request.url}: {response.text}"
    return response.json() if response.content else {}


async def bounded(jobs: list[Awaitable], limit: int = CONCURRENCY) -> list:
    """Run `jobs` with at most `limit` at a time (the machine has two cores; the stack is real)."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable):
        async with gate:
            return await job
    return await asyncio.gather(*(one(job) for job in jobs))


async def import_districts(admin: httpx.AsyncClient) -> None:
    rows = "\n".join(",".join((code, "district", en, km, parent)) for code, en, km, parent in DISTRICTS)
    body = f"code,level,name_en,name_km,parent_code\n{rows}\n".encode()
    answer = await admin.post("/locations/import", content=body, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text


async def make_units(admin: httpx.AsyncClient) -> tuple[dict[str, Unit], list[str]]:
    """A below GDY, A1 below A, B below GDY; A and B in programme P1, A1 in P2."""
    p1, p2 = await create_program(admin), await create_program(admin)
    a = await create_org(admin, province_codes=["12", "17"])
    a1 = await create_org(admin, parent_id=a["id"])
    b = await create_org(admin, parent_id=GDY_ORGANIZATION_ID)
    plans = {"A": (a, p1, ("12", "1201", "1202", "17")), "A1": (a1, p2, ("08", "12", "1201")),
             "B": (b, p1, ("17", "1701", "12"))}
    units = {}
    for name, (org, program, places) in plans.items():
        project = await create_project(admin, org["id"], program["id"], location_codes=sorted({p[:2] for p in places}))
        units[name] = Unit(org, project, places)
    return units, [p1["code"], p2["code"]]


def person(index: int, residence: str) -> dict:
    """Sex, date of birth (with a guardian's consent for a minor) and residence of the index-th volunteer."""
    born = BIRTHS[index % len(BIRTHS)]
    body = {"sex": SEXES[index % len(SEXES)], "date_of_birth": born, "residence_province": residence}
    if born > ADULT_FROM:
        body["consent"] = {"given": True, "guardian_name": f"Guardian {index}", "guardian_relation": "mother"}
    return body


async def enrol_volunteer(admin: httpx.AsyncClient, unit: Unit, index: int, residence: str) -> dict:
    volunteer = await register(admin, organization_id=unit.org["id"], **person(index, residence))
    await create_enrollment(admin, volunteer["id"], unit.project["id"])
    return volunteer


async def enrol_everyone(admin: httpx.AsyncClient, units: dict[str, Unit]) -> None:
    """A: 12 (its last two are merged and erased later), A1: 6, B: 9; living in 12, 17, 08 and 03."""
    sizes = {"A": 12, "A1": 6, "B": 9}
    residences = ("12", "12", "17", "08", "12", "03")
    jobs = [(unit, enrol_volunteer(admin, units[unit], i, residences[(i + len(unit)) % len(residences)]))
            for unit, size in sizes.items() for i in range(size)]
    made = await bounded([job for _, job in jobs])
    for (unit, _), volunteer in zip(jobs, made):
        units[unit].volunteers.append(volunteer)


@dataclass
class Entry:
    """One activity to log and what then happens to it."""

    unit: Unit
    volunteer: dict
    day: str
    hours: float
    fate: str  # verify, partial, submitted, reject, void_verified, void_submitted, correct_then_verify
    activity_type: str
    place: str
    beneficiaries: dict


# Verified in full or in part and rejected entries are logged and decided in bulk; the others one by one.
BULK_FATES = ("verify", "partial", "reject")
FATES = ("verify", "verify", "partial", "submitted", "reject", "void_verified", "verify", "correct_then_verify",
         "void_submitted", "verify")


def plan_entries(units: dict[str, Unit], rng: random.Random) -> list[Entry]:
    """Three entries a volunteer on distinct days; a heavy few work long days (verified-hours bands 20-49, 50+)."""
    entries = []
    n = 0
    for unit in units.values():
        for position, volunteer in enumerate(unit.volunteers):
            heavy = {0: (6, 9.0), 1: (3, 8.0)}.get(position)
            count, hours = heavy if heavy else (3, None)
            for day in rng.sample(DAYS, count):
                fate = "verify" if heavy else FATES[n % len(FATES)]
                n += 1
                entries.append(Entry(unit, volunteer, day, hours or rng.choice(HOURS), fate, rng.choice(TYPES),
                                     rng.choice(unit.places), people_reached(rng)))
    return entries


def people_reached(rng: random.Random) -> dict:
    """By sex; children are counted among them, so never more than their sum."""
    reached = {"female": rng.randint(0, 6), "male": rng.randint(0, 6), "other": rng.randint(0, 1)}
    return {**reached, "children": rng.randint(0, min(4, sum(reached.values())))}


def entry_body(entry: Entry) -> dict:
    return activity_body(Setting(entry.unit.org, entry.unit.project, entry.volunteer), date=entry.day,
                         hours=entry.hours, activity_type=entry.activity_type, location_code=entry.place,
                         beneficiaries=entry.beneficiaries)


def bulk_decision(entry: Entry, activity_id: str) -> dict:
    if entry.fate == "reject":
        return {"id": activity_id, "decision": "reject", "reason": "not volunteering"}
    approved = {"approved_hours": entry.hours / 2} if entry.fate == "partial" else {}
    return {"id": activity_id, "decision": "verify", **approved}


async def log_and_decide_in_bulk(admin: httpx.AsyncClient, entries: list[Entry]) -> list[str]:
    """Entries decided at once: logged in one batch, then decided in one bulk verification (the paths
    that publish many events a transaction); their statuses."""
    logged = await ok(lambda: admin.post("/activities/batch", json={"items": [entry_body(e) for e in entries]}))
    assert logged["created"] == len(entries), logged
    ids = {item["index"]: item["id"] for item in logged["items"]}
    decisions = [bulk_decision(entry, ids[index]) for index, entry in enumerate(entries)]
    decided = await ok(lambda: admin.post("/activities/verifications", json={"items": decisions}))
    assert decided["updated"] == len(entries), decided
    return ["rejected" if entry.fate == "reject" else "verified" for entry in entries]


async def carry_out(admin: httpx.AsyncClient, entry: Entry) -> dict:
    """Log the entry alone, then correct, decide or void it as its fate says; the activity as it finally stands."""
    body = entry_body(entry)
    activity = await ok(lambda: log(admin, body))
    path = f"/activities/{activity['id']}"
    if entry.fate == "correct_then_verify":
        await ok(lambda: admin.patch(path, json={"hours": entry.hours + 0.5, "location_code": entry.unit.places[0]}))
    if entry.fate in ("correct_then_verify", "void_verified"):
        activity = await ok(lambda: admin.post(f"{path}/verify", json={}))
    if entry.fate in ("void_verified", "void_submitted"):
        activity = await ok(lambda: admin.post(f"{path}/void", json={"reason": "logged twice"}))
    return activity


def assessment(volunteer: dict, instrument: str, items: tuple[str, ...], phase: str, rng: random.Random,
               top: int, **extra) -> dict:
    return {"volunteer_id": volunteer["id"], "instrument": instrument, "phase": phase,
            "taken_on": "2026-02-01" if phase == "baseline" else "2026-11-20",
            "scores": {item: rng.randint(1 if top == 5 else 0, top) for item in items}, **extra}


async def assess(admin: httpx.AsyncClient, units: dict[str, Unit], rng: random.Random) -> None:
    """Soft skills for every volunteer of A and B but the last of each (a baseline only); digital literacy
    for A1 and half of A; A's first volunteer's soft-skills endline recorded twice (the second replaces)."""
    bodies = []
    for name, unit in units.items():
        for position, volunteer in enumerate(unit.volunteers):
            if name != "A1":
                phases = ("baseline",) if position == len(unit.volunteers) - 1 else ("baseline", "endline")
                bodies += [assessment(volunteer, "soft-skills-v1", SOFT, phase, rng, 5) for phase in phases]
            if name == "A1" or (name == "A" and position % 2 == 0):
                bodies += [assessment(volunteer, "digital-literacy-v1", DIGITAL, phase, rng, 4)
                           for phase in ("baseline", "endline")]
    recorded = await bounded([ok(lambda body=body: admin.post("/assessments", json=body)) for body in bodies])
    first = next(r for r in recorded if r["volunteer_id"] == units["A"].volunteers[0]["id"]
                 and r["instrument"] == "soft-skills-v1" and r["phase"] == "endline")
    again = assessment(units["A"].volunteers[0], "soft-skills-v1", SOFT, "endline", rng, 5, replaces=first["id"])
    await ok(lambda: admin.post("/assessments", json=again))


async def merge_and_erase(admin: httpx.AsyncClient, units: dict[str, Unit]) -> None:
    """A's last two volunteers, who have logged: the one before last merged into the first, the last erased."""
    survivor, duplicate, erased = units["A"].volunteers[0], units["A"].volunteers[-2], units["A"].volunteers[-1]
    await ok(lambda: admin.post(f"/volunteers/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]}))
    await ok(lambda: admin.delete(f"/volunteers/{erased['id']}"))


async def amend_people(admin: httpx.AsyncClient, units: dict[str, Unit]) -> None:
    """After they logged: B's first volunteer moves to Kampot (07) and is recorded as male; A1's fifth is
    transferred to B, with a corrected date of birth (31, no longer 23)."""
    moved, transferred = units["B"].volunteers[0], units["A1"].volunteers[4]
    await ok(lambda: admin.patch(f"/volunteers/{moved['id']}", json={"sex": "male", "residence_province": "07"}))
    await ok(lambda: admin.patch(f"/volunteers/{transferred['id']}",
                                 json={"organization_id": units["B"].org["id"], "date_of_birth": "1995-05-05"}))


async def write_programme_history(admin: httpx.AsyncClient, seed: int = 17) -> History:
    rng = random.Random(seed)
    await import_districts(admin)
    units, codes = await make_units(admin)
    await enrol_everyone(admin, units)
    entries = plan_entries(units, rng)
    statuses = await log_and_decide_in_bulk(admin, [e for e in entries if e.fate in BULK_FATES])
    alone = await bounded([carry_out(admin, e) for e in entries if e.fate not in BULK_FATES])
    statuses += [activity["status"] for activity in alone]
    await assess(admin, units, rng)
    await merge_and_erase(admin, units)
    await amend_people(admin, units)
    return History(units, codes, activities=sum(s in ("submitted", "verified") for s in statuses),
                   verified=statuses.count("verified"))
