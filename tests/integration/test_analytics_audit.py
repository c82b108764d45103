"""Issue 17 audited through a stack of its own, started with `VMC_ANALYTICS_SUPPRESSION_K=3`: the threshold is a
setting (the same cells hidden at the session stack's default k = 5); complementary suppression in JSON, CSV
and the DHIS2 export; an erased volunteer still counted and no answer naming a volunteer; events produced
straight to the topics in a shuffled order, with duplicates, giving the in-order figures on every endpoint;
every dimension as a filter agreeing with it as a group, alone and in pairs; poison events dead-lettered while
the figures go on, as /ready and /metrics show.

The world: an organisation's project with seven volunteers (26 on the activity date, living in 12), each
with one verified entry in 12 on 10 March 2026: three women of 2 h (one of them erased afterwards), three men
of 1 h, one undisclosed of 1.5 h; each reached 4 women, 3 men and 2 children; each has a soft-skills
baseline and endline.
"""
from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.analytics.figures import answer as figures_answer
from services.analytics.figures import parse_question
from services.analytics.queries import REPORTS
from shared.caller import GDY_ORGANIZATION_ID, SCOPES, CallerContext
from shared.events import ACTIVITIES_TOPIC, ACTIVITY_SUBMITTED, ACTIVITY_VERIFIED, REGISTRY_TOPIC, dead_letter_topic
from tests.conftest import eventually
from tests.eventlog import find_events
from tests.factories import create_enrollment, create_org, create_project, org_key, register
from tests.harness import Stack, stack_of_its_own
from tests.integration.activity_factories import Setting, activity_body, log
from tests.integration.analytics_answers import wait_settled
from tests.integration.analytics_events import (
    OwnTopics, apply_in_order, programme_history, publish, records_of, settings_for, shuffled_with_duplicates,
)
from tests.integration.volunteer_factories import personal_strings

K = 3
PEOPLE = [("female", 2.0)] * 3 + [("male", 1.0)] * 3 + [("undisclosed", 1.5)]
SOFT = ("communication", "teamwork", "leadership", "problem_solving", "critical_thinking", "self_confidence")
PARTITIONS = 3  # VMC_KAFKA_PARTITIONS' default: the topics the services make for themselves


@pytest.fixture(scope="module")
def small_k_stack():
    with stack_of_its_own(VMC_ANALYTICS_SUPPRESSION_K=str(K)) as stack:
        yield stack


def gateway(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=60)


@dataclass
class World:
    org: dict
    project: dict
    volunteers: list[tuple[dict, dict]]  # (the registry's full record, the volunteer as registered)
    erased: dict


async def seven_volunteers(admin: httpx.AsyncClient) -> World:
    """The module's world on the stack `admin` talks to, once analytics counts all of it."""
    org = await create_org(admin)
    project = await create_project(admin, org["id"])

    async def one(sex: str, hours: float) -> dict:
        body = {"organization_id": org["id"], "sex": sex, "date_of_birth": "2000-01-01", "residence_province": "12"}
        volunteer = await register(admin, **body)
        await create_enrollment(admin, volunteer["id"], project["id"])
        logged = await log(admin, activity_body(Setting(org, project, volunteer), hours=hours, location_code="12"))
        assert logged.status_code == 201, logged.text
        verified = await admin.post(f"/activities/{logged.json()['id']}/verify", json={})
        assert verified.status_code == 200, verified.text
        for phase, taken_on, score in (("baseline", "2026-03-01", 2), ("endline", "2026-06-01", 4)):
            recorded = await admin.post("/assessments", json={
                "volunteer_id": volunteer["id"], "instrument": "soft-skills-v1", "phase": phase, "taken_on": taken_on,
                "scores": {item: score for item in SOFT}})
            assert recorded.status_code == 201, recorded.text
        return volunteer

    made = await asyncio.gather(*(one(sex, hours) for sex, hours in PEOPLE))
    # What the registry holds of each (names, contacts, external ids), read before the erasure.
    volunteers = [((await admin.get(f"/volunteers/{v['id']}")).json(), v) for v in made]
    erased = volunteers[0][1]
    assert (await admin.delete(f"/volunteers/{erased['id']}")).status_code == 204

    async def counted() -> bool:
        answer = await admin.get("/analytics/overview", params={"organization": org["id"]})
        skills = await admin.get("/analytics/skills", params={"organization": org["id"], "instrument": "soft-skills-v1"})
        return (answer.status_code == 200 and answer.json()["rows"][0]["activities"] == len(PEOPLE)
                and skills.status_code == 200 and skills.json()["rows"][0]["volunteers"] == len(PEOPLE))

    await eventually(counted, 60, what="the seven verified entries and assessments in analytics")
    return World(org, project, volunteers, erased)


@pytest.fixture(scope="module")
async def world(small_k_stack: Stack) -> World:
    async with gateway(small_k_stack) as admin:
        return await seven_volunteers(admin)


async def rows(client: httpx.AsyncClient, path: str, **params) -> list[dict]:
    answer = await client.get(f"/analytics/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["rows"]


def by_sex(found: list[dict]) -> dict[str, dict]:
    return {row.pop("sex"): row for row in (dict(r) for r in found)}


HIDDEN = {"hours": None, "activities": None, "volunteers": None, "suppressed": True}


# ---- Deliver 4: k is a setting -------------------------------------------------------------------------------
async def test_the_suppression_threshold_is_a_setting(small_k_stack: Stack, world: World, stack: Stack):
    """Three women are a visible cell at k = 3 and a hidden one at the default k = 5, the same world on both."""
    async with gateway(stack) as admin_of_default:
        default_world = await seven_volunteers(admin_of_default)
        async with org_key(stack, admin_of_default, default_world.org["id"], ["analytics:read"]) as at_five:
            five = by_sex(await rows(at_five, "hours", group_by="sex"))
            # The whole organisation (7 volunteers) stays visible at 5: k is a threshold, not a blanket.
            [total] = await rows(at_five, "hours")
    async with gateway(small_k_stack) as admin, \
            org_key(small_k_stack, admin, world.org["id"], ["analytics:read"]) as at_three:
        three = by_sex(await rows(at_three, "hours", group_by="sex"))
    assert three["female"] == {"hours": 6.0, "activities": 3, "volunteers": 3, "suppressed": False}
    assert five == {"female": HIDDEN, "male": HIDDEN, "undisclosed": HIDDEN}
    assert total == {"hours": 10.5, "activities": 7, "volunteers": 7, "suppressed": False}


# ---- Deliver 4 and 5: complementary suppression in JSON, CSV and DHIS2 --------------------------------------
async def test_complementary_suppression_through_the_gateway_in_json_csv_and_dhis2(small_k_stack: Stack, world: World):
    """By sex: the undisclosed volunteer's cell is under k; the total (7) is not, so it would be the total minus
    the others: the smaller of the two cells of 3 is hidden too, men and women tie at 3 volunteers, and the men's
    3 h are fewer than the women's 6 h. The erased woman still counts among the three."""
    async with gateway(small_k_stack) as admin, \
            org_key(small_k_stack, admin, world.org["id"], ["analytics:read"]) as reader, \
            org_key(small_k_stack, admin, world.org["id"], ["analytics:read", "analytics:unsuppressed"]) as full:
        assert await rows(reader, "hours", group_by="sex") == [
            {"sex": "female", "hours": 6.0, "activities": 3, "volunteers": 3, "suppressed": False},
            {"sex": "male", **HIDDEN}, {"sex": "undisclosed", **HIDDEN}]
        # The total the complement protects against is served, and is exact.
        assert await rows(reader, "hours") == [{"hours": 10.5, "activities": 7, "volunteers": 7, "suppressed": False}]
        csv = await reader.get("/analytics/hours", params={"group_by": "sex"}, headers={"Accept": "text/csv"})
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv"), csv.text
        assert csv.text == ("sex,hours,activities,volunteers,suppressed\r\nfemale,6.0,3,3,false\r\n"
                            "male,,,,true\r\nundisclosed,,,,true\r\n")
        # A key holding analytics:unsuppressed sees both hidden cells.
        assert by_sex(await rows(full, "hours", group_by="sex")) == {
            "female": {"hours": 6.0, "activities": 3, "volunteers": 3, "suppressed": False},
            "male": {"hours": 3.0, "activities": 3, "volunteers": 3, "suppressed": False},
            "undisclosed": {"hours": 1.5, "activities": 1, "volunteers": 1, "suppressed": False}}

        exported = await reader.get("/analytics/export/dhis2", params={"period": "202603"})
        assert exported.status_code == 200, exported.text
        payload = exported.json()
        # Volunteers by residence x sex x age band: which of the two cells of 3 the complement takes is the
        # /analytics/volunteers answer's to say; the export must carry exactly its visible cells.
        by_residence = await rows(reader, "volunteers", group_by="province,sex,age_band",
                                  **{"from": "2026-03-01", "to": "2026-03-31"})
        visible = {(r["sex"], r["age_band"]): r["volunteers"] for r in by_residence if not r["suppressed"]}
        assert len(visible) == 1 and sum(r["suppressed"] for r in by_residence) == 2, by_residence
        [(sex, band)] = visible
        coc = {("female", "25-30"): "CocF2530Age", ("male", "25-30"): "CocM2530Age"}[sex, band]

        def value(element: str, combo: str, figure: str) -> dict:
            return {"dataElement": element, "period": "202603", "orgUnit": "KhPrv12Unit",
                    "categoryOptionCombo": combo, "value": figure}
        assert payload["dataValues"] == [
            value("VmcHoursSex", "CocFemale01", "6"),  # the men and the undisclosed left out
            value("VmcActivity", "HllvX50cXC0", "7"),
            value("VmcVolSxAge", coc, "3"),
            value("VmcBenefSex", "CocFemale01", "28"), value("VmcBenefSex", "CocMale0001", "21"),
            value("VmcBenefSex", "CocOther001", "0"), value("VmcBenefChl", "HllvX50cXC0", "14"),
        ], payload
        # The hidden undisclosed cells have no combo: still not reported as unmapped (that would show them).
        assert payload["unmapped"] == [] and payload["summary"] == {"dataValues": 7, "suppressed": 4, "unmapped": 0}


# ---- Deliver 4: erased volunteers count, no answer names a volunteer -----------------------------------------
def _answers_to_check() -> list[tuple[str, dict]]:
    """Every report plain and by every dimension alone (the skills report with its instrument)."""
    asked = []
    for name, report in REPORTS.items():
        extra = {"instrument": "soft-skills-v1"} if name == "skills" else {"status": "all"}
        asked += [(name, extra)] + [(name, {**extra, "group_by": d}) for d in report.dimensions]
    return asked


async def test_no_answer_names_a_volunteer_and_the_erased_one_still_counts(small_k_stack: Stack, world: World):
    allowed_keys = {"as_of", "group_by", "rows", "organizations"}
    secrets = [v["id"] for _, v in world.volunteers]
    secrets += [s for body, _ in world.volunteers for s in personal_strings(body)]
    secrets += [ext["id"] for body, _ in world.volunteers for ext in body.get("external_ids") or ()]
    assert len(secrets) > 3 * len(PEOPLE), secrets  # names, phones, emails and external ids were read back
    async with gateway(small_k_stack) as admin, \
            org_key(small_k_stack, admin, world.org["id"], ["analytics:read"]) as reader:
        for client in (admin, reader):
            for report, params in _answers_to_check():
                params = {**params, "organization": world.org["id"]}
                as_json = await client.get(f"/analytics/{report}", params=params)
                as_csv = await client.get(f"/analytics/{report}", params=params, headers={"Accept": "text/csv"})
                assert as_json.status_code == as_csv.status_code == 200, (report, params, as_json.text, as_csv.text)
                body = as_json.json()
                assert set(body) <= allowed_keys and body["as_of"], (report, body)
                fields = set(body["group_by"]) | set(REPORTS[report].measures) | {"suppressed"}
                header = as_csv.text.splitlines()[0].split(",")
                assert all(set(row) <= fields for row in body["rows"]), (report, params, body["rows"])
                assert set(header) - fields <= {c for c in header if c.endswith(("_baseline_mean", "_endline_mean",
                                                                                  "_mean_change"))}, header
                assert as_csv.headers["last-modified"], report
                for text in (as_json.text, as_csv.text):
                    assert not [s for s in secrets if s in text], (report, params)
                if client is reader:
                    # Never singled out: a visible row comes from at least k volunteers, and no hidden cell is
                    # the total (7 volunteers, visible) minus the visible ones: never exactly one hidden of several.
                    assert all(r["suppressed"] or r["volunteers"] >= K for r in body["rows"]), (report, params, body)
                    hidden = sum(r["suppressed"] for r in body["rows"])
                    assert hidden != 1 or len(body["rows"]) == 1, (report, params, body)
        # The erased woman is one of the seven counted everywhere, and of the three women.
        assert (await rows(admin, "volunteers", organization=world.org["id"]))[0]["volunteers"] == len(PEOPLE)
        women = await rows(admin, "volunteers", group_by="sex", sex="female", organization=world.org["id"])
        assert women == [{"sex": "female", "volunteers": 3, "suppressed": False}]
        [skills] = await rows(admin, "skills", instrument="soft-skills-v1", organization=world.org["id"])
        assert (skills["volunteers"], skills["mean_change"]) == (len(PEOPLE), 12.0)


# ---- Deliver 1: order independence through the running service -------------------------------------------------
NATIONAL = CallerContext("test-national", uuid.UUID(GDY_ORGANIZATION_ID), frozenset(SCOPES), national=True)


def _order_questions(org: str, program_code: str) -> list[tuple[str, list[tuple[str, str]]]]:
    asked = []
    for name, report in REPORTS.items():
        base = [("organization", org)] + ([("instrument", "soft-skills-v1")] if name == "skills" else [])
        statuses = [[]] if name == "skills" else [[], [("status", "all")]]
        for status in statuses:
            asked += [(name, base + status)] + [(name, base + status + [("group_by", d)]) for d in report.dimensions]
    asked += [("hours", [("program", program_code), ("group_by", "sex,age_band,province,district")]),
              ("volunteers", [("organization", org), ("group_by", "province,sex,age_band"), ("status", "all")])]
    return asked


async def test_events_shuffled_and_repeated_on_the_topics_give_the_in_order_figures(small_k_stack: Stack,
                                                                                      world: World):
    """A programme's history (registrations, a correction, a partial approval, a void, a merge, an erasure, a
    replaced assessment) produced to vmc.registry.v1 and vmc.activities.v1 in a shuffled order, eight events
    twice, each on a random key: every endpoint's figures equal those of the same events applied one by one
    in the order they happened."""
    history = programme_history()
    delivered = shuffled_with_duplicates(history.events, seed=17, duplicates=8)
    topics = OwnTopics(registry=REGISTRY_TOPIC, activities=ACTIVITIES_TOPIC)
    await publish(settings_for(small_k_stack.broker.bootstrap), topics,
                  records_of(topics, delivered, random.Random(17)))
    await wait_settled(small_k_stack)

    reference = await apply_in_order(history.events)
    try:
        asked = _order_questions(str(history.org), f"T-{history.program.hex[:8].upper()}")
        mismatched = []
        async with gateway(small_k_stack) as admin:
            for report, params in asked:
                got = await admin.get(f"/analytics/{report}", params=params)
                assert got.status_code == 200, (report, params, got.text)
                question = parse_question(REPORTS[report], params, NATIONAL)
                expected = await figures_answer(reference, question, NATIONAL, K)
                expected_rows = orjson.loads(orjson.dumps(expected["rows"]))
                if got.json()["rows"] != expected_rows:
                    mismatched.append((report, params, got.json()["rows"], expected_rows))
        assert not mismatched, mismatched[:3]
        # Not vacuous: the history's figures are there (a merge, a void and a correction behind them).
        [overview] = (await _national(small_k_stack, "overview", organization=str(history.org)))
        assert (overview["activities"], overview["hours"], overview["volunteers"]) == (1, 3.5, 1)
    finally:
        reference.close()


async def _national(stack: Stack, report: str, **params) -> list[dict]:
    async with gateway(stack) as admin:
        return await rows(admin, report, **params)


# ---- Deliver 2: every dimension as a filter and a group, in combination ------------------------------------------
async def test_a_filter_answers_what_its_group_says_in_any_combination(small_k_stack: Stack, world: World):
    """For the four activity reports and every dimension d: each row v of `group_by=d` is exactly the answer of
    the filter `d=v` (placement, labels and filters agree); for the hours and every pair of dimensions,
    `group_by=d1,d2&d1=v` holds exactly the rows of v. Over the world and a programme's history (two provinces,
    districts, sexes and age bands, a merge and a void), status=all."""
    history = programme_history()
    topics = OwnTopics(registry=REGISTRY_TOPIC, activities=ACTIVITIES_TOPIC)
    await publish(settings_for(small_k_stack.broker.bootstrap), topics, records_of(topics, history.events, random.Random(3)))
    await wait_settled(small_k_stack)
    async with gateway(small_k_stack) as admin:
        made = await admin.post("/admin/api-keys", json={
            "name": "many questions", "organization_id": GDY_ORGANIZATION_ID, "national": True,
            "scopes": ["analytics:read", "analytics:unsuppressed"], "rate_limit_per_minute": 100_000})
        assert made.status_code == 201, made.text
    national = httpx.AsyncClient(base_url=small_k_stack.api, headers={"Authorization": f"Bearer {made.json()['key']}"},
                                 timeout=60)
    checked, mismatched = 0, []
    async with national:
        for report in ("overview", "hours", "volunteers", "beneficiaries"):
            for d in REPORTS[report].dimensions:
                for row in await rows(national, report, group_by=d, status="all"):
                    if row[d] is None:  # unknown: not a value a filter can name
                        continue
                    alone = await rows(national, report, status="all", **{d: row[d]})
                    checked += 1
                    if alone != [{k: v for k, v in row.items() if k != d}]:
                        mismatched.append((report, d, row, alone))
        dims = REPORTS["hours"].dimensions
        for d1 in dims:
            for d2 in (d for d in dims if d != d1):
                grouped = await rows(national, "hours", group_by=f"{d1},{d2}", status="all")
                values = sorted({r[d1] for r in grouped if r[d1] is not None})
                for value in values[:2]:
                    picked = await rows(national, "hours", group_by=f"{d1},{d2}", status="all", **{d1: value})
                    checked += 1
                    if picked != [r for r in grouped if r[d1] == value]:
                        mismatched.append(("hours", f"{d1},{d2}", value, picked))
    assert not mismatched, mismatched[:5]
    assert checked > 300, checked


# ---- Deliver 7: poison events, lag, as_of age, dead letters ----------------------------------------------------
def _dead_letters(samples: list) -> float:
    return sum(s.value for s in samples if s.name == "vmc_dead_letters_total" and s.labels["consumer"] == "analytics")


async def _health(stack: Stack) -> tuple[dict, list]:
    """Analytics' /ready body and /metrics samples."""
    async with httpx.AsyncClient(base_url=stack.urls["analytics"], timeout=30) as analytics:
        ready = (await analytics.get("/ready")).json()
        samples = [s for f in text_string_to_metric_families((await analytics.get("/metrics")).text)
                   for s in f.samples]
    return ready, samples


async def _poison_then_a_good_event(stack: Stack, poison: list[bytes]) -> None:
    """`poison` then a good verified activity (4.5 approved hours of a new organisation's project), all on one
    key, so on the partition the poison sits in; returns once the good event's hours are counted."""
    history = programme_history()
    activity = uuid.uuid4()
    good = history.add(ACTIVITY_VERIFIED, history.activity(activity, history.others[0], 2, "verified", hours=5.0,
                                                           approved=4.5))
    topics = OwnTopics(registry=REGISTRY_TOPIC, activities=ACTIVITIES_TOPIC)
    settings = settings_for(stack.broker.bootstrap)
    # The organisation, programme and project first, so the good event's hours have an organisation to show under.
    await publish(settings, topics, records_of(topics, history.events[:3], random.Random(7)))
    await publish(settings, topics, [(ACTIVITIES_TOPIC, activity.bytes, value) for value in [*poison, good.to_bytes()]])

    async with gateway(stack) as admin:
        async def counted() -> bool:
            answer = await admin.get("/analytics/hours", params={"organization": str(history.org)})
            return answer.status_code == 200 and answer.json()["rows"][0]["hours"] == 4.5
        await eventually(counted, 60, what="the event after the poison counted")


def _an_activity_event(**changes) -> dict:
    history = programme_history()
    event = history.add(ACTIVITY_SUBMITTED, history.activity(uuid.uuid4(), history.others[0], 1, "submitted"))
    return orjson.loads(event.to_bytes()) | changes


async def test_poison_events_are_dead_lettered_and_later_figures_arrive(small_k_stack: Stack, world: World):
    """Not JSON, and an activity event whose payload fails its model, on the partition a good event then follows:
    both reach vmc.analytics.dlq, /ready and /metrics count them, the good event's hours reach /analytics/hours;
    /ready and /metrics show the lag of every partition of both topics and the age of as_of."""
    invalid = _an_activity_event()
    invalid["data"]["hours"] = "a lot"
    poison = [b"{not json", orjson.dumps(invalid)]
    ready, samples = await _health(small_k_stack)
    before = (ready["consumers"]["analytics"]["dead_lettered"], _dead_letters(samples))

    await _poison_then_a_good_event(small_k_stack, poison)

    values = {p.decode() for p in poison}
    dead = await find_events(small_k_stack.broker.bootstrap, dead_letter_topic("analytics"),
                             lambda e: e.get("value") in values, count=2, timeout=30)
    assert {d["value"] for d in dead} == values, dead
    assert {d["topic"] for d in dead} == {ACTIVITIES_TOPIC} and all(d["error"] for d in dead), dead
    ready, samples = await _health(small_k_stack)
    consumer = ready["consumers"]["analytics"]
    assert (consumer["dead_lettered"], _dead_letters(samples)) == (before[0] + 2, before[1] + 2), (before, ready)
    partitions = {f"{t}/{p}" for t in (REGISTRY_TOPIC, ACTIVITIES_TOPIC) for p in range(PARTITIONS)}
    assert set(consumer["lag"]) == partitions and all(lag >= 0 for lag in consumer["lag"].values()), ready
    assert ready["store"]["as_of"] and ready["store"]["as_of_age_s"] >= 0, ready
    lagged = {f"{s.labels['topic']}/{s.labels['partition']}" for s in samples
              if s.name == "vmc_consumer_lag" and s.labels["consumer"] == "analytics"}
    assert lagged == partitions, lagged
    assert [s.value >= 0 for s in samples if s.name == "vmc_analytics_as_of_age_seconds"] == [True]


async def test_an_event_of_a_type_no_catalogue_knows_is_dead_lettered(small_k_stack: Stack, world: World):
    unknown = orjson.dumps(_an_activity_event(type="vmc.activity.teleported"))
    await _poison_then_a_good_event(small_k_stack, [unknown])
    await find_events(small_k_stack.broker.bootstrap, dead_letter_topic("analytics"),
                      lambda e: e.get("value") == unknown.decode(), count=1, timeout=10)
