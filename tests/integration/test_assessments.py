"""Assessments through the gateway: instruments, scores and totals, one per volunteer, instrument and phase
(or an explicit replacement), dates, isolation between organisations, idempotency and events."""
from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.assessments import service
from services.activities.assessments.models import AssessmentCreate
from services.activities.registry_view.client import RegistryClient
from services.activities.registry_view.handlers import HANDLERS
from services.activities.scope import Visibility
from shared import events as ev
from shared.caller import GDY_ORGANIZATION_ID, SCOPES, CallerContext
from shared.errors import ProblemError
from shared.events import ACTIVITIES_TOPIC
from tests.api import assert_problem, walk
from tests.conftest import eventually
from tests.eventlog import find_events
from tests.factories import create_org, org_key, register
from tests.harness import unique

SOFT = {"communication": 4, "teamwork": 5, "leadership": 3, "problem_solving": 2, "critical_thinking": 1,
        "self_confidence": 5}
DIGITAL = {"device_basics": 0, "information_search": 4, "online_safety": 2, "digital_communication": 3,
           "content_creation": 1}
KEY_SCOPES = ["registry:read", "registry:write", "activities:read", "activities:write"]


def phnom_penh_today():
    return datetime.now(timezone(timedelta(hours=7))).date()


def assessment_body(volunteer_id: str, **overrides) -> dict:
    return {"volunteer_id": volunteer_id, "instrument": "soft-skills-v1", "phase": "baseline",
            "taken_on": "2026-03-02", "scores": dict(SOFT), **overrides}


async def record(client: httpx.AsyncClient, volunteer_id: str, **overrides) -> dict:
    answer = await client.post("/assessments", json=assessment_body(volunteer_id, **overrides))
    assert answer.status_code == 201, answer.text
    return answer.json()


async def test_the_seeded_instruments_are_listed_with_items_and_ranges(admin: httpx.AsyncClient):
    answer = await admin.get("/assessment-instruments")
    assert answer.status_code == 200, answer.text
    instruments = {i["code"]: i for i in answer.json()["items"]}
    assert set(instruments) == {"soft-skills-v1", "digital-literacy-v1"}
    soft, digital = instruments["soft-skills-v1"], instruments["digital-literacy-v1"]
    assert [item["code"] for item in soft["items"]] == list(SOFT)
    assert [item["code"] for item in digital["items"]] == list(DIGITAL)
    assert (soft["min_score"], soft["max_score"], digital["min_score"], digital["max_score"]) == (1, 5, 0, 4)
    assert all(item["name_en"] and item["name_km"] for i in instruments.values() for item in i["items"])


async def test_an_assessment_of_a_volunteer_registered_one_request_earlier_is_recorded_and_published(admin, stack):
    volunteer = await register(admin)  # activities has not heard of it yet: it asks the registry
    assessment = await record(admin, volunteer["id"], instrument="digital-literacy-v1", scores=DIGITAL,
                              taken_on=phnom_penh_today().isoformat())
    assert assessment["total"] == sum(DIGITAL.values()) == 10
    assert {k: assessment[k] for k in ("volunteer_id", "instrument", "phase", "scores", "replaces", "replaced_by")} == {
        "volunteer_id": volunteer["id"], "instrument": "digital-literacy-v1", "phase": "baseline", "scores": DIGITAL,
        "replaces": None, "replaced_by": None}
    assert (await admin.get(f"/assessments/{assessment['id']}")).json() == assessment
    assert await walk(admin, "/assessments", volunteer_id=volunteer["id"]) == [assessment]

    [event] = await find_events(stack.broker.bootstrap, ACTIVITIES_TOPIC, lambda e: e.get("subject") == assessment["id"])
    assert event["type"] == "vmc.assessment.recorded" and event["source"] == "/activities"
    assert event["data"] == {"id": assessment["id"], "volunteer_id": volunteer["id"], "instrument": "digital-literacy-v1",
                             "phase": "baseline", "taken_on": assessment["taken_on"], "scores": DIGITAL, "total": 10,
                             "replaces": None}
    raw = event["_raw"].decode()
    assert volunteer["name_latin"] not in raw and volunteer["phone"] not in raw


BAD_INPUT = [
    ("total sent by the client", {"total": 20}, ["body", "total"]),
    ("server-owned id", {"id": str(uuid.uuid4())}, ["body", "id"]),
    ("server-owned status", {"status": "recorded"}, ["body", "status"]),
    ("unknown field", {"notes": "calm"}, ["body", "notes"]),
    ("unknown instrument", {"instrument": "soft-skills-v9"}, ["body", "instrument"]),
    ("unknown phase", {"phase": "final"}, ["body", "phase"]),
    ("an item missing", {"scores": {k: v for k, v in SOFT.items() if k != "teamwork"}}, ["body", "scores", "teamwork"]),
    ("an unknown item", {"scores": {**SOFT, "creativity": 3}}, ["body", "scores", "creativity"]),
    ("an item of the other instrument", {"scores": {**SOFT, "online_safety": 3}}, ["body", "scores", "online_safety"]),
    ("above the range", {"scores": {**SOFT, "leadership": 6}}, ["body", "scores", "leadership"]),
    ("below the range", {"scores": {**SOFT, "leadership": 0}}, ["body", "scores", "leadership"]),
    ("digital literacy above 4", {"instrument": "digital-literacy-v1", "scores": {**DIGITAL, "device_basics": 5}},
     ["body", "scores", "device_basics"]),
    ("a fraction", {"scores": {**SOFT, "teamwork": 3.5}}, ["body", "scores", "teamwork"]),
    ("a boolean", {"scores": {**SOFT, "teamwork": True}}, ["body", "scores", "teamwork"]),
    ("a string", {"scores": {**SOFT, "teamwork": "3"}}, ["body", "scores", "teamwork"]),
    ("no scores", {"scores": None}, ["body", "scores"]),
    # Tomorrow when the test runs, not when it is collected (a run crossing Phnom Penh's midnight sent today).
    ("taken tomorrow in Phnom Penh", {"taken_on": lambda: str(phnom_penh_today() + timedelta(days=1))}, ["body", "taken_on"]),
    ("an impossible date", {"taken_on": "2026-02-30"}, ["body", "taken_on"]),
    ("an unknown volunteer", {"volunteer_id": str(uuid.uuid4())}, ["body", "volunteer_id"]),
    ("replacing nothing", {"replaces": str(uuid.uuid4())}, ["body", "replaces"]),
]


@pytest.mark.parametrize(("what", "change", "loc"), BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
async def test_bad_input_is_a_422_naming_the_field_and_records_nothing(admin: httpx.AsyncClient, what, change, loc):
    volunteer = await register(admin)
    body = {**assessment_body(volunteer["id"]), **{k: v() if callable(v) else v for k, v in change.items()}}
    assert_problem(await admin.post("/assessments", json={k: v for k, v in body.items() if v is not None}), 422, loc)
    assert await walk(admin, "/assessments", volunteer_id=volunteer["id"]) == []


async def test_a_second_assessment_of_a_phase_is_a_409_naming_the_first_unless_it_replaces_it(admin, stack):
    volunteer = await register(admin)
    first = await record(admin, volunteer["id"])
    problem = assert_problem(await admin.post("/assessments", json=assessment_body(volunteer["id"])), 409)
    assert problem["existing_id"] == first["id"] and first["id"] in problem["detail"]
    # Another phase or another instrument is another assessment.
    midline = await record(admin, volunteer["id"], phase="midline")
    digital = await record(admin, volunteer["id"], instrument="digital-literacy-v1", scores=DIGITAL)

    wrong_phase = assessment_body(volunteer["id"], replaces=midline["id"])
    assert_problem(await admin.post("/assessments", json=wrong_phase), 422, ["body", "replaces"])
    second = await record(admin, volunteer["id"], scores={**SOFT, "teamwork": 1}, replaces=first["id"])
    assert (second["replaces"], second["total"]) == (first["id"], sum(SOFT.values()) - 4)
    old = (await admin.get(f"/assessments/{first['id']}")).json()
    assert old["replaced_by"] == second["id"] and old["updated_at"] > first["updated_at"]

    again = assert_problem(await admin.post("/assessments", json=assessment_body(volunteer["id"], replaces=first["id"])), 409,
                           ["body", "replaces"])
    assert again["existing_id"] == second["id"]
    third = await record(admin, volunteer["id"], replaces=second["id"])
    stale = assert_problem(await admin.post("/assessments", json=assessment_body(volunteer["id"], replaces=first["id"])), 409)
    assert stale["existing_id"] == third["id"]  # the one current now, not the one that replaced it first
    current = {a["id"] for a in await walk(admin, "/assessments", volunteer_id=volunteer["id"], current="true")}
    assert current == {third["id"], midline["id"], digital["id"]}
    replaced = await walk(admin, "/assessments", volunteer_id=volunteer["id"], current="false")
    assert {a["id"] for a in replaced} == {first["id"], second["id"]}

    [event] = await find_events(stack.broker.bootstrap, ACTIVITIES_TOPIC, lambda e: e.get("subject") == second["id"])
    assert event["type"] == "vmc.assessment.replaced" and event["data"]["replaces"] == first["id"]


async def test_concurrent_twins_record_one_assessment(admin: httpx.AsyncClient):
    volunteer = await register(admin)
    await record(admin, volunteer["id"], phase="endline")  # the projection now knows the volunteer
    body = assessment_body(volunteer["id"])
    answers = await asyncio.gather(*[admin.post("/assessments", json=body) for _ in range(4)])
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409], [a.text for a in answers]
    [created] = [a.json() for a in answers if a.status_code == 201]
    assert all(a.json()["existing_id"] == created["id"] for a in answers if a.status_code == 409)

    replacing = assessment_body(volunteer["id"], replaces=created["id"])
    answers = await asyncio.gather(*[admin.post("/assessments", json=replacing) for _ in range(4)])
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409], [a.text for a in answers]
    baselines = await walk(admin, "/assessments", volunteer_id=volunteer["id"], phase="baseline", current="true")
    assert [b["id"] for b in baselines] == [a.json()["id"] for a in answers if a.status_code == 201]


async def test_filters_and_pages(admin: httpx.AsyncClient):
    volunteer = await register(admin)
    made = [await record(admin, volunteer["id"], phase=phase) for phase in ("baseline", "midline", "endline")]
    made.append(await record(admin, volunteer["id"], instrument="digital-literacy-v1", scores=DIGITAL))
    pages = await walk(admin, "/assessments", volunteer_id=volunteer["id"], limit=1)
    assert [a["id"] for a in pages] == [a["id"] for a in made]
    assert [a["id"] for a in await walk(admin, "/assessments", volunteer_id=volunteer["id"], phase="midline")] == [made[1]["id"]]
    assert [a["id"] for a in await walk(admin, "/assessments", volunteer_id=volunteer["id"],
                                        instrument="digital-literacy-v1")] == [made[3]["id"]]
    since = await walk(admin, "/assessments", volunteer_id=volunteer["id"], updated_since=made[2]["updated_at"])
    assert [a["id"] for a in since] == [made[2]["id"], made[3]["id"]]
    for params, loc in [({"limit": 501}, ["query", "limit"]), ({"phase": "final"}, ["query", "phase"]),
                        ({"instrument": "x"}, ["query", "instrument"]), ({"volunteer_id": "x"}, ["query", "volunteer_id"]),
                        ({"cursor": "nonsense"}, ["query", "cursor"]), ({"updated_since": "yesterday"}, ["query", "updated_since"])]:
        assert_problem(await admin.get("/assessments", params=params), 422, loc)


async def test_another_organisations_assessments_are_not_found(admin: httpx.AsyncClient, stack):
    org_a, org_b = await create_org(admin), await create_org(admin)
    async with org_key(stack, admin, org_a["id"], KEY_SCOPES) as as_a, org_key(stack, admin, org_b["id"], KEY_SCOPES) as as_b:
        volunteer = await register(as_a)
        mine = await record(as_a, volunteer["id"])
        child = await create_org(admin, parent_id=org_a["id"])
        child_volunteer = await register(admin, organization_id=child["id"])
        below = await record(admin, child_volunteer["id"])
        # The parent sees what is recorded below it.
        assert {a["id"] for a in await walk(as_a, "/assessments")} == {mine["id"], below["id"]}
        assert (await as_a.get(f"/assessments/{below['id']}")).status_code == 200

        assert await walk(as_b, "/assessments") == []
        assert await walk(as_b, "/assessments", volunteer_id=volunteer["id"]) == []
        assert_problem(await as_b.get(f"/assessments/{mine['id']}"), 404)
        assert_problem(await as_b.post("/assessments", json=assessment_body(volunteer["id"], phase="midline")), 422,
                       ["body", "volunteer_id"])
        theirs = await register(as_b)
        assert_problem(await as_b.post("/assessments", json=assessment_body(theirs["id"], replaces=mine["id"])), 422,
                       ["body", "replaces"])
        assert_problem(await as_b.get(f"/assessments/{uuid.uuid4()}"), 404)

    async with org_key(stack, admin, org_a["id"], ["activities:read"]) as reader:
        assert_problem(await reader.post("/assessments", json=assessment_body(volunteer["id"], phase="endline")), 403)
        assert (await reader.get("/assessment-instruments")).status_code == 200


async def test_an_erased_volunteer_gets_no_new_assessment(admin: httpx.AsyncClient):
    volunteer = await register(admin)
    first = await record(admin, volunteer["id"])
    assert (await admin.delete(f"/volunteers/{volunteer['id']}")).status_code == 204
    replacing = assessment_body(volunteer["id"], replaces=first["id"])

    async def refused() -> bool:
        answer = await admin.post("/assessments", json=replacing)
        assert answer.status_code in (201, 422), answer.text
        if answer.status_code == 201:  # the erasure had not reached activities yet: undo nothing, try again later
            replacing["replaces"] = answer.json()["id"]
            return False
        assert_problem(answer, 422, ["body", "volunteer_id"], says="erased")
        return True

    await eventually(refused, what="the erasure reaching activities")
    # What was recorded before stays, for statistics.
    assert first["id"] in {a["id"] for a in await walk(admin, "/assessments", volunteer_id=volunteer["id"])}


async def test_idempotency_key_replays_the_assessment(admin: httpx.AsyncClient):
    volunteer = await register(admin)
    key = {"Idempotency-Key": unique("idem")}
    body = assessment_body(volunteer["id"])
    first = await admin.post("/assessments", json=body, headers=key)
    again = await admin.post("/assessments", json=body, headers=key)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    assert_problem(await admin.post("/assessments", json={**body, "phase": "midline"}, headers=key), 409)
    assert len(await walk(admin, "/assessments", volunteer_id=volunteer["id"])) == 1


async def test_a_merge_gives_the_duplicates_assessments_to_the_survivor_and_keeps_both_of_a_phase(admin: httpx.AsyncClient, stack):
    org = await create_org(admin)
    survivor, duplicate = await register(admin, organization_id=org["id"]), await register(admin)
    kept = await record(admin, survivor["id"], taken_on="2026-02-01")
    clash = await record(admin, duplicate["id"], taken_on="2026-02-03")
    only_theirs = await record(admin, duplicate["id"], phase="midline")
    merged = await admin.post(f"/volunteers/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]})
    assert merged.status_code == 200, merged.text

    async def moved() -> bool:
        return len(await walk(admin, "/assessments", volunteer_id=survivor["id"])) == 3

    await eventually(moved, what="the duplicate's assessments re-pointed to the survivor")
    after = {a["id"]: a for a in await walk(admin, "/assessments", volunteer_id=survivor["id"])}
    assert set(after) == {kept["id"], clash["id"], only_theirs["id"]}  # nothing dropped
    assert after[clash["id"]]["replaced_by"] == kept["id"] and after[kept["id"]]["replaced_by"] is None
    assert after[only_theirs["id"]]["replaced_by"] is None
    assert await walk(admin, "/assessments", volunteer_id=duplicate["id"]) == []
    async with org_key(stack, admin, org["id"], KEY_SCOPES) as survivors_org:  # they follow the survivor's organisation
        assert {a["id"] for a in await walk(survivors_org, "/assessments")} == set(after)
    assert_problem(await admin.post("/assessments", json=assessment_body(duplicate["id"], phase="endline")), 422,
                   ["body", "volunteer_id"], says="merged")


async def test_a_volunteer_moving_to_another_organisation_takes_their_assessments_into_its_view(admin: httpx.AsyncClient, stack):
    old_home, new_home = await create_org(admin), await create_org(admin)
    volunteer = await register(admin, organization_id=old_home["id"])
    first = await record(admin, volunteer["id"])
    moved = await admin.patch(f"/volunteers/{volunteer['id']}", json={"organization_id": new_home["id"]})
    assert moved.status_code == 200, moved.text
    async with org_key(stack, admin, new_home["id"], KEY_SCOPES) as as_new, \
            org_key(stack, admin, old_home["id"], KEY_SCOPES) as as_old:
        async def visible() -> bool:
            return (await as_new.get(f"/assessments/{first['id']}")).status_code == 200

        await eventually(visible, what="the assessment visible to the volunteer's new organisation")
        # The new organisation is told of the one it can now see, and replaces it.
        problem = assert_problem(await as_new.post("/assessments", json=assessment_body(volunteer["id"])), 409)
        assert problem["existing_id"] == first["id"]
        second = await record(as_new, volunteer["id"], replaces=first["id"])
        assert {a["id"] for a in await walk(as_new, "/assessments", volunteer_id=volunteer["id"])} == {first["id"], second["id"]}
        for assessment in (first, second):
            assert_problem(await as_old.get(f"/assessments/{assessment['id']}"), 404)
        assert await walk(as_old, "/assessments", volunteer_id=volunteer["id"]) == []


# ---- rules on a rolled-back session (tests/db.py) ----------------------------------------------------
async def test_with_the_registry_unreachable_a_known_volunteer_is_assessed_and_an_unknown_one_says_retry(
        activities_session: AsyncSession):
    national = Visibility(CallerContext("test", uuid.UUID(GDY_ORGANIZATION_ID), frozenset(SCOPES), national=True), None)
    org, known = uuid.uuid4(), uuid.uuid4()
    for type_, payload in ((ev.ORGANIZATION_CREATED, ev.OrganizationChanged(id=org, kind="ngo")),
                           (ev.VOLUNTEER_REGISTERED, ev.VolunteerChanged(id=known, organization_id=org, sex="male",
                                                                         date_of_birth=date(2005, 5, 5), residence_province="12"))):
        event = ev.new_event(type_, "subject", payload)
        await HANDLERS[type_](activities_session, event, event.payload())
    down = RegistryClient("http://127.0.0.1:1", "secret", 0.5)  # nothing listens on port 1
    try:
        recorded = await service.record_assessment(activities_session, down, national,
                                                   AssessmentCreate(**assessment_body(str(known))))
        assert (recorded.organization_id, recorded.total) == (org, sum(SOFT.values()))
        with pytest.raises(ProblemError) as refused:
            await service.record_assessment(activities_session, down, national,
                                            AssessmentCreate(**assessment_body(str(uuid.uuid4()))))
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
    finally:
        await down.close()
