"""Activities through the gateway: the taxonomy, logging and its rules, read-your-writes across services,
client references and Idempotency-Key, isolation, events, and following the registry (merge, erasure)."""
from __future__ import annotations

import asyncio
import uuid

import httpx

from shared.caller import GDY_ORGANIZATION_ID, SCOPES, CallerContext, encode_caller
from shared.events import ACTIVITIES_TOPIC
from tests.api import assert_problem, walk
from tests.conftest import eventually
from tests.eventlog import find_events
from tests.factories import create_enrollment, create_org, create_project, org_key, register
from tests.harness import unique
from tests.integration.activity_factories import LOGGER, activity_body, log, setting


async def test_activity_types_cover_the_programme_taxonomy(admin: httpx.AsyncClient):
    answer = await admin.get("/activity-types")
    assert answer.status_code == 200, answer.text
    types = {t["code"]: t for t in answer.json()["items"]}
    for code in ("climate_awareness_session", "climate_adaptation_action", "tree_planting", "clean_up",
                 "environmental_protection", "digital_literacy_training_given", "digital_literacy_training_received",
                 "child_rights_awareness", "education_support", "health_promotion", "community_meeting",
                 "community_development_work"):
        assert types[code]["name_en"] and types[code]["name_km"], code
    assert types["tree_planting"]["focus_area"] == "environment"
    assert types["digital_literacy_training_given"]["focus_area"] == "digital_literacy"


async def test_an_activity_for_records_made_one_request_earlier_is_accepted(admin: httpx.AsyncClient):
    s = await setting(admin)  # organisation, project, volunteer and enrolment: none of them known by events yet
    body = activity_body(s)
    answer = await log(admin, body)
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["status"] == "submitted" and made["version"] == 1 and made["approved_hours"] is None
    assert made["organization_id"] == s.org["id"] and made["program_id"] == s.project["program_id"]
    assert made["focus_area"] == "environment" and made["hours"] == 2.5
    assert made["beneficiaries"] == body["beneficiaries"] and made["evidence_urls"] == body["evidence_urls"]
    assert (await admin.get(f"/activities/{made['id']}")).json() == made
    listed = await walk(admin, "/activities", volunteer_id=s.volunteer["id"])
    assert [a["id"] for a in listed] == [made["id"]]
    assert await walk(admin, "/activities", project_id=s.project["id"], status="verified") == []
    assert len(await walk(admin, "/activities", organization_id=s.org["id"], **{"from": "2026-03-10", "to": "2026-03-10"})) == 1
    assert await walk(admin, "/activities", project_id=s.project["id"], **{"from": "2026-03-11"}) == []
    assert len(await walk(admin, "/activities", project_id=s.project["id"], updated_since=made["updated_at"])) == 1


async def test_each_rule_is_a_422_naming_its_field(admin: httpx.AsyncClient):
    s = await setting(admin)
    stranger = await register(admin, organization_id=s.org["id"])  # registered, not enrolled
    cases = [
        ({"hours": 0}, "hours"), ({"hours": 24.5}, "hours"), ({"hours": 1.234}, "hours"),
        ({"date": "2099-01-01"}, "date"), ({"date": "2026-01-14"}, "date"),
        ({"location_code": "9999"}, "location_code"), ({"location_code": "1"}, "location_code"),
        ({"activity_type": "juggling"}, "activity_type"),
        ({"evidence_urls": ["ftp://example.org/x"]}, "evidence_urls"),
        ({"evidence_urls": ["javascript:alert(1)"]}, "evidence_urls"),
        ({"beneficiaries": {"female": 1, "male": 0, "other": 0, "children": 2}}, "beneficiaries"),
        ({"volunteer_id": str(uuid.uuid4())}, "volunteer_id"),
        ({"project_id": str(uuid.uuid4())}, "project_id"),
        ({"volunteer_id": stranger["id"]}, "project_id"),
    ]
    for field in ("id", "status", "version", "approved_hours", "created_at", "updated_at", "nickname"):
        cases.append(({field: "x"}, field))
    for overrides, field in cases:
        answer = await log(admin, activity_body(s, **overrides))
        problem = assert_problem(answer, 422)
        assert any(e["loc"][:2] == ["body", field] for e in problem["errors"]), (overrides, problem)
    ended = await setting(admin, end_date="2026-06-30")
    assert_problem(await log(admin, activity_body(ended, date="2026-07-01")), 422, ["body", "date"])
    assert await walk(admin, "/activities", project_id=s.project["id"]) == []


async def test_hours_of_one_volunteer_day_sum_to_at_most_24_even_when_posted_together(admin: httpx.AsyncClient):
    s = await setting(admin)
    assert (await log(admin, activity_body(s, date="2026-04-01", hours=20))).status_code == 201
    problem = assert_problem(await log(admin, activity_body(s, date="2026-04-01", hours=4.5)), 422, ["body", "hours"])
    assert "24" in problem["detail"]
    assert (await log(admin, activity_body(s, date="2026-04-01", hours=4))).status_code == 201
    # Two entries of 13 hours on a fresh day at the same moment: one fits, the other does not.
    answers = await asyncio.gather(*(log(admin, activity_body(s, date="2026-04-02", hours=13)) for _ in range(2)))
    assert sorted(a.status_code for a in answers) == [201, 422], [a.text for a in answers]
    day = await walk(admin, "/activities", volunteer_id=s.volunteer["id"], **{"from": "2026-04-02", "to": "2026-04-02"})
    assert [a["hours"] for a in day] == [13]


async def test_a_client_reference_or_idempotency_key_never_makes_a_second_entry(admin: httpx.AsyncClient):
    s = await setting(admin)
    body = activity_body(s)
    first = await log(admin, body)
    again = await log(admin, {**body, "hours": 3})
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["hours"] == 2.5
    # The same entry sent twice at once (a client retrying on a timeout): one entry, both told its id.
    twin = activity_body(s, date="2026-05-04")
    answers = await asyncio.gather(log(admin, twin), log(admin, twin))
    assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    key = unique("idem")
    keyed = activity_body(s, client_reference=None, date="2026-05-05")
    one = await log(admin, keyed, **{"Idempotency-Key": key})
    two = await log(admin, keyed, **{"Idempotency-Key": key})
    assert one.status_code == two.status_code == 201 and one.json() == two.json()
    assert_problem(await log(admin, {**keyed, "hours": 1}, **{"Idempotency-Key": key}), 409)
    assert len(await walk(admin, "/activities", volunteer_id=s.volunteer["id"])) == 3


async def test_another_organisations_activity_is_a_404(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    made = (await log(admin, activity_body(s))).json()
    other = await create_org(admin)
    async with org_key(stack, admin, other["id"], LOGGER) as as_other:
        assert_problem(await as_other.get(f"/activities/{made['id']}"), 404)
        assert made["id"] not in [a["id"] for a in await walk(as_other, "/activities")]
        # Their volunteer and project are not theirs to log for either.
        problem = assert_problem(await log(as_other, activity_body(s)), 422)
        assert {"volunteer_id", "project_id"} <= {e["loc"][1] for e in problem["errors"]}
    async with org_key(stack, admin, s.org["id"], LOGGER) as as_owner:
        assert (await as_owner.get(f"/activities/{made['id']}")).status_code == 200
        assert (await log(as_owner, activity_body(s, date="2026-03-11"))).status_code == 201
    child = await create_org(admin, parent_id=s.org["id"])
    async with org_key(stack, admin, child["id"], LOGGER) as as_child:  # below the project's organisation
        assert_problem(await as_child.get(f"/activities/{made['id']}"), 404)


async def test_submitted_event_carries_the_figures_and_no_personal_data(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    made = (await log(admin, activity_body(s, description="Met Sokha at her home"))).json()
    [event] = await find_events(stack.broker.bootstrap, ACTIVITIES_TOPIC, lambda e: e.get("subject") == made["id"])
    assert event["type"] == "vmc.activity.submitted" and event["source"] == "/activities"
    data = event["data"]
    assert data["volunteer_id"] == s.volunteer["id"] and data["program_id"] == s.project["program_id"]
    assert data["organization_id"] == s.org["id"] and data["hours"] == 2.5 and data["status"] == "submitted"
    assert data["location_code"] == "12" and data["beneficiaries"]["children"] == 2 and data["version"] == 1
    assert b"Sokha" not in event["_raw"] and b"example.org" not in event["_raw"]
    assert s.volunteer["name_latin"].encode() not in event["_raw"]


async def probe(client: httpx.AsyncClient, body: dict) -> dict:
    """What a dry run says of one entry (changes nothing, so it can be asked again and again)."""
    answer = await client.post("/activities/batch", params={"dry_run": "true"}, json={"items": [body]})
    assert answer.status_code == 200, answer.text
    return answer.json()["items"][0]


async def test_a_merge_moves_the_duplicates_activities_and_reports_an_overfull_day(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    duplicate = await register(admin, organization_id=s.org["id"])
    await create_enrollment(admin, duplicate["id"], s.project["id"])
    only_theirs = await create_project(admin, s.org["id"])  # the merge hands this enrolment to the survivor
    await create_enrollment(admin, duplicate["id"], only_theirs["id"])
    assert (await probe(admin, activity_body(s, volunteer_id=duplicate["id"], project_id=only_theirs["id"])))["status"] == "created"
    mine = (await log(admin, activity_body(s, date="2026-06-01", hours=20))).json()
    theirs = (await log(admin, activity_body(s, volunteer_id=duplicate["id"], date="2026-06-01", hours=10))).json()
    other_day = (await log(admin, activity_body(s, volunteer_id=duplicate["id"], date="2026-06-02", hours=1))).json()
    scores = {item: 3 for item in ("communication", "teamwork", "leadership", "problem_solving", "critical_thinking",
                                    "self_confidence")}
    assessed = await admin.post("/assessments", json={"volunteer_id": duplicate["id"], "instrument": "soft-skills-v1",
                                                      "phase": "baseline", "taken_on": "2026-02-02", "scores": scores})
    assert assessed.status_code == 201, assessed.text
    merged = await admin.post(f"/volunteers/{s.volunteer['id']}/merge", json={"duplicate_id": duplicate["id"]})
    assert merged.status_code == 200, merged.text

    async def moved() -> bool:
        activity = (await admin.get(f"/activities/{theirs['id']}")).json()
        assessment = (await admin.get(f"/assessments/{assessed.json()['id']}")).json()
        return activity["volunteer_id"] == assessment["volunteer_id"] == s.volunteer["id"]

    await eventually(moved, what="the duplicate's activity and assessment re-pointed to the survivor")
    both = {a["id"]: a for a in await walk(admin, "/activities", volunteer_id=s.volunteer["id"])}
    assert set(both) == {mine["id"], theirs["id"], other_day["id"]}  # nothing dropped
    assert "24" in both[mine["id"]]["conflict"] and "24" in both[theirs["id"]]["conflict"]
    assert both[other_day["id"]]["conflict"] is None
    [moved_event] = await find_events(stack.broker.bootstrap, ACTIVITIES_TOPIC,
                                      lambda e: e.get("subject") == theirs["id"] and e["type"] == "vmc.activity.reassigned")
    assert moved_event["data"]["volunteer_id"] == s.volunteer["id"] and moved_event["data"]["revision"] == 2
    item = await probe(admin, activity_body(s, volunteer_id=duplicate["id"], date="2026-06-03"))
    assert item["status"] == "error" and item["errors"][0]["loc"] == ["volunteer_id"], item
    assert "merged" in item["errors"][0]["msg"]
    survivor_entry = await log(admin, activity_body(s, project_id=only_theirs["id"], date="2026-06-05"))
    assert survivor_entry.status_code == 201, survivor_entry.text
    # The survivor's overfull day takes nothing more.
    assert (await probe(admin, activity_body(s, date="2026-06-01", hours=0.5)))["errors"][0]["loc"] == ["hours"]


async def test_an_erased_volunteer_gets_no_new_entries_and_keeps_the_old_ones(admin: httpx.AsyncClient):
    s = await setting(admin)
    before = (await log(admin, activity_body(s))).json()
    assert (await admin.delete(f"/volunteers/{s.volunteer['id']}")).status_code == 204

    async def refused() -> bool:
        item = await probe(admin, activity_body(s, date="2026-03-12"))
        return item["status"] == "error" and "erased" in item["errors"][0]["msg"]

    await eventually(refused, what="the erasure reaching activities")
    assert_problem(await log(admin, activity_body(s, date="2026-03-12")), 422, ["body", "volunteer_id"], says="erased")
    kept = (await admin.get(f"/activities/{before['id']}")).json()
    assert kept["hours"] == 2.5 and kept["volunteer_id"] == s.volunteer["id"]  # still counted
    assert kept["description"] is None and kept["evidence_urls"] == []  # what was written about them is gone


async def test_with_the_registry_down_known_volunteers_are_accepted_and_unknown_ones_told_to_retry(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    assert (await log(admin, activity_body(s))).status_code == 201  # now known here
    # A volunteer activities has never heard of: with the registry away it cannot tell a record made a
    # moment ago from one that does not exist, so it says retry rather than "not found".
    unknown = activity_body(s, volunteer_id=str(uuid.uuid4()), date="2026-03-12")
    stack.stop_part("registry")
    try:
        assert (await log(admin, activity_body(s, date="2026-03-11"))).status_code == 201
        problem = assert_problem(await log(admin, unknown), 503, ["body", "volunteer_id"])
        assert "retry" in problem["detail"] and problem["status"] == 503
        item = await probe(admin, unknown)
        assert item["status"] == "error" and "retry" in item["errors"][0]["msg"]
    finally:
        stack.start_part("registry")
        await eventually(lambda: _ready(stack), 60, what="the registry back")
    assert_problem(await log(admin, unknown), 422, ["body", "volunteer_id"], says="not found")


async def _ready(stack) -> bool:
    async with httpx.AsyncClient() as client:
        try:
            return (await client.get(stack.urls["registry"] + "/health")).status_code == 200
        except httpx.HTTPError:
            return False


async def test_the_registrys_internal_route_is_not_public(admin: httpx.AsyncClient, stack):
    body = {"volunteer_ids": [], "project_ids": [], "location_codes": ["12"]}
    assert_problem(await admin.post("/internal/references", json=body), 404)
    async with httpx.AsyncClient(base_url=stack.urls["registry"] + "/api/v1") as direct:
        assert_problem(await direct.post("/internal/references", json=body), 401)  # no caller context
        key = CallerContext("some-api-key", uuid.UUID(GDY_ORGANIZATION_ID), frozenset(SCOPES), national=True)
        assert_problem(await direct.post("/internal/references", json=body, headers=encode_caller(key, stack.secret)), 404)
        service = CallerContext("service:activities", uuid.UUID(GDY_ORGANIZATION_ID), frozenset(), national=True)
        answer = await direct.post("/internal/references", json=body, headers=encode_caller(service, stack.secret))
        assert answer.status_code == 200 and answer.json()["locations"][0]["level"] == "province", answer.text


async def test_a_volunteer_moving_to_another_organisation_takes_their_entries_into_its_view(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    made = (await log(admin, activity_body(s))).json()
    new_home = await create_org(admin)
    moved = await admin.patch(f"/volunteers/{s.volunteer['id']}", json={"organization_id": new_home["id"]})
    assert moved.status_code == 200, moved.text
    async with org_key(stack, admin, new_home["id"], LOGGER) as as_new_home:
        async def visible() -> bool:
            return (await as_new_home.get(f"/activities/{made['id']}")).status_code == 200

        await eventually(visible, what="the entry visible to the volunteer's new organisation")
