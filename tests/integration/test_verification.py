"""Verification through the gateway: verify (partial approval), reject and void with reasons, who may decide,
the lock on verified entries, corrections as versions with the rules checked again, bulk decisions, events."""
from __future__ import annotations

import asyncio
import uuid

import httpx

from shared.events import ACTIVITIES_TOPIC
from tests.api import assert_problem
from tests.eventlog import find_events
from tests.factories import create_enrollment, create_org, create_project, org_key, register
from tests.integration.activity_factories import LOGGER, Setting, activity_body, log, setting

VERIFIER = [*LOGGER, "activities:verify"]


async def logged(client: httpx.AsyncClient, s: Setting, **overrides) -> dict:
    answer = await log(client, activity_body(s, **overrides))
    assert answer.status_code == 201, answer.text
    return answer.json()


async def decide(client: httpx.AsyncClient, activity: dict, action: str, body: dict | None = None) -> httpx.Response:
    return await client.post(f"/activities/{activity['id']}/{action}", json=body)


async def ok(answer: httpx.Response) -> dict:
    assert answer.status_code == 200, answer.text
    return answer.json()


async def events_of(stack, activity_id: str, count: int) -> list[dict]:
    found = await find_events(stack.broker.bootstrap, ACTIVITIES_TOPIC, lambda e: e.get("subject") == activity_id, count=count)
    return sorted(found, key=lambda e: e["data"]["revision"])


async def test_partial_approval_then_locked_then_voided(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    activity = await logged(admin, s, hours=2.5)
    async with org_key(stack, admin, s.org["id"], VERIFIER) as verifier:
        for body, loc in [({"approved_hours": 3}, ["body", "approved_hours"]), ({"approved_hours": 0}, ["body", "approved_hours"]),
                          ({"approved_hours": 1.005}, ["body", "approved_hours"]), ({"status": "verified"}, ["body", "status"])]:
            assert_problem(await decide(verifier, activity, "verify", body), 422, loc)
        verified = await ok(await decide(verifier, activity, "verify", {"approved_hours": 1.5}))
        assert (verified["status"], verified["approved_hours"], verified["hours"], verified["version"]) == ("verified", 1.5, 2.5, 1)
        # The same decision again is harmless; another one is a conflict.
        assert (await ok(await decide(verifier, activity, "verify", {"approved_hours": 1.5})))["updated_at"] == verified["updated_at"]
        assert_problem(await decide(verifier, activity, "verify"), 409, ["body", "approved_hours"])
        # Locked: no correction, no rejection.
        assert_problem(await verifier.patch(f"/activities/{activity['id']}", json={"hours": 2}), 409)
        assert_problem(await decide(verifier, activity, "reject", {"reason": "duplicate"}), 409)
        # Voided, with a reason.
        assert_problem(await decide(verifier, activity, "void", {}), 422, ["body", "reason"])
        assert_problem(await decide(verifier, activity, "void", {"reason": "   "}), 422, ["body", "reason"])
        voided = await ok(await decide(verifier, activity, "void", {"reason": "logged for the wrong volunteer"}))
        assert (voided["status"], voided["approved_hours"]) == ("voided", 1.5)
        assert_problem(await decide(verifier, activity, "verify"), 409)
        assert (await admin.get(f"/activities/{activity['id']}")).json()["status"] == "voided"

    submitted, verified_event, voided_event = await events_of(stack, activity["id"], 3)
    assert [e["type"] for e in (submitted, verified_event, voided_event)] == [
        "vmc.activity.submitted", "vmc.activity.verified", "vmc.activity.voided"]
    assert (verified_event["data"]["approved_hours"], verified_event["data"]["hours"], verified_event["data"]["version"]) == (1.5, 2.5, 1)
    assert voided_event["data"]["status"] == "voided"
    assert "wrong volunteer" not in voided_event["_raw"].decode()  # reasons are free text: never published


async def test_rejection_needs_a_reason_and_is_final(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    activity = await logged(admin, s)
    assert_problem(await decide(admin, activity, "reject", {}), 422, ["body", "reason"])
    assert_problem(await decide(admin, activity, "reject"), 422)
    rejected = await ok(await decide(admin, activity, "reject", {"reason": "no evidence"}))
    assert (rejected["status"], rejected["approved_hours"]) == ("rejected", None)
    assert (await ok(await decide(admin, activity, "reject", {"reason": "again"})))["status"] == "rejected"
    assert_problem(await decide(admin, activity, "verify"), 409)
    assert_problem(await decide(admin, activity, "void", {"reason": "x"}), 409)
    assert_problem(await admin.patch(f"/activities/{activity['id']}", json={"hours": 1}), 409)
    _, event = await events_of(stack, activity["id"], 2)
    assert event["type"] == "vmc.activity.rejected" and event["data"]["status"] == "rejected"


async def test_only_the_projects_organisation_or_an_ancestor_decides(admin: httpx.AsyncClient, stack):
    parent = await create_org(admin)
    runner = await create_org(admin, parent_id=parent["id"])
    below = await create_org(admin, parent_id=runner["id"])
    stranger = await create_org(admin)
    managing = await create_org(admin)  # manages the volunteer, does not run the project
    project = await create_project(admin, runner["id"])
    volunteer = await register(admin, organization_id=managing["id"])
    await create_enrollment(admin, volunteer["id"], project["id"])
    s = Setting(runner, project, volunteer)
    first, second, third = [await logged(admin, s, date=f"2026-04-0{day}") for day in (1, 2, 3)]

    for org in (stranger, below):
        async with org_key(stack, admin, org["id"], VERIFIER) as other:
            for action, body in (("verify", None), ("reject", {"reason": "r"}), ("void", {"reason": "r"})):
                assert_problem(await decide(other, first, action, body), 404)
            assert_problem(await other.patch(f"/activities/{first['id']}", json={"hours": 1}), 404)
            assert_problem(await other.get(f"/activities/{first['id']}/versions"), 404)
            assert_problem(await decide(other, {"id": str(uuid.uuid4())}, "verify"), 404)
    async with org_key(stack, admin, managing["id"], VERIFIER) as volunteers_org:
        assert (await volunteers_org.get(f"/activities/{first['id']}")).status_code == 200
        assert_problem(await decide(volunteers_org, first, "verify"), 403)
    async with org_key(stack, admin, runner["id"], LOGGER) as without_scope:
        assert_problem(await decide(without_scope, first, "verify"), 403)
        assert_problem(await without_scope.post("/activities/verifications", json={"items": []}), 403)
    async with org_key(stack, admin, runner["id"], VERIFIER) as as_runner:
        assert (await ok(await decide(as_runner, first, "verify")))["approved_hours"] == first["hours"]
    async with org_key(stack, admin, parent["id"], VERIFIER) as as_parent:
        assert (await ok(await decide(as_parent, second, "reject", {"reason": "r"})))["status"] == "rejected"
    assert (await ok(await decide(admin, third, "verify")))["status"] == "verified"  # national


async def test_a_correction_is_a_new_version_checked_like_a_new_entry(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    activity = await logged(admin, s, date="2026-05-04", hours=2.5)
    await logged(admin, s, date="2026-05-04", hours=20)
    path = f"/activities/{activity['id']}"
    for body, loc in [
        ({"hours": 4.5}, ["body", "hours"]),              # 20 + 4.5 > 24 on that day
        ({"hours": None}, ["body", "hours"]),
        ({"hours": 0}, ["body", "hours"]),
        ({"date": "2099-01-01"}, ["body", "date"]),
        ({"date": "2026-01-01"}, ["body", "date"]),       # before the project starts
        ({"activity_type": "juggling"}, ["body", "activity_type"]),
        ({"location_code": "9999"}, ["body", "location_code"]),
        ({"evidence_urls": ["ftp://example.org/x"]}, ["body", "evidence_urls"]),
        ({"volunteer_id": str(uuid.uuid4())}, ["body", "volunteer_id"]),
        ({"status": "verified"}, ["body", "status"]),
        ({"version": 5}, ["body", "version"]),
        ({"approved_hours": 1}, ["body", "approved_hours"]),
    ]:
        assert_problem(await admin.patch(path, json=body), 422, loc)
    # Its own 2.5 hours do not count against the day: 20 + 4 is 24.
    corrected = await ok(await admin.patch(path, json={"hours": 4, "description": "Planted 40 mangroves",
                                                       "beneficiaries": {"female": 9, "male": 1}}))
    assert (corrected["version"], corrected["hours"], corrected["beneficiaries"]["female"]) == (2, 4, 9)
    assert corrected["client_reference"] == activity["client_reference"]
    moved = await ok(await admin.patch(path, json={"date": "2026-05-05", "hours": 6}))
    assert (moved["version"], moved["date"]) == (3, "2026-05-05")
    same = await ok(await admin.patch(path, json={"hours": 6}))
    assert same["version"] == 3 and same["updated_at"] == moved["updated_at"]

    history = await ok(await admin.get(f"{path}/versions"))
    assert [v["version"] for v in history["items"]] == [1, 2, 3]
    assert [(v["date"], v["hours"]) for v in history["items"]] == [("2026-05-04", 2.5), ("2026-05-04", 4), ("2026-05-05", 6)]
    assert history["items"][0] == activity and history["items"][2] == moved
    assert history["items"][1]["description"] == "Planted 40 mangroves"

    events = await events_of(stack, activity["id"], 3)
    assert [(e["type"], e["data"]["version"], e["data"]["hours"]) for e in events] == [
        ("vmc.activity.submitted", 1, 2.5), ("vmc.activity.corrected", 2, 4), ("vmc.activity.corrected", 3, 6)]
    verified = await ok(await decide(admin, activity, "verify"))
    assert (verified["version"], verified["approved_hours"]) == (3, 6)
    assert_problem(await admin.patch(path, json={"hours": 5}), 409)


async def test_bulk_decisions_answer_per_item(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    entries = [await logged(admin, s, date=f"2026-06-{day:02d}", hours=3) for day in range(1, 7)]
    theirs = await logged(admin, await setting(admin))
    ids = [e["id"] for e in entries]
    items = [
        {"id": ids[0], "decision": "verify"},
        {"id": ids[1], "decision": "verify", "approved_hours": 2},
        {"id": ids[2], "decision": "reject", "reason": "no evidence"},
        {"id": ids[3], "decision": "reject"},                            # 3: no reason
        {"id": str(uuid.uuid4()), "decision": "verify"},                 # 4: nowhere
        {"id": theirs["id"], "decision": "verify"},                      # 5: another organisation's
        "verify them all",                                               # 6
        {"id": ids[4], "decision": "verify", "approved_hours": 4},       # 7: more than claimed
        {"id": ids[5], "decision": "approve"},                           # 8: no such decision
        {"id": ids[0], "decision": "reject", "reason": "changed my mind"},  # 9: item 0 decides it already
        {"id": ids[5], "decision": "verify", "status": "verified"},      # 10: unknown field
    ]
    async with org_key(stack, admin, s.org["id"], VERIFIER) as verifier:
        dry = await verifier.post("/activities/verifications", json={"items": items}, params={"dry_run": "true"})
        assert dry.status_code == 200, dry.text
        assert (dry.json()["dry_run"], dry.json()["updated"], dry.json()["errors"]) == (True, 3, 8)
        assert {(await verifier.get(f"/activities/{i}")).json()["status"] for i in ids} == {"submitted"}

        answer = await verifier.post("/activities/verifications", json={"items": items})
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        by_index = {i["index"]: i for i in summary["items"]}
        assert [by_index[i]["status"] for i in range(len(items))] == [
            "updated", "updated", "updated", "error", "error", "error", "error", "error", "error", "error", "error"]
        assert (summary["created"], summary["updated"], summary["ignored"], summary["errors"]) == (0, 3, 0, 8)
        assert by_index[3]["errors"] == [{"loc": ["reason"], "msg": "required to reject"}]
        assert by_index[4]["errors"] == by_index[5]["errors"] == [{"loc": ["id"], "msg": "not found"}]
        assert by_index[7]["errors"][0]["loc"] == ["approved_hours"]
        assert by_index[8]["errors"][0]["loc"] == ["decision"]
        assert by_index[9]["errors"][0]["loc"] == ["id"]
        assert by_index[10]["errors"][0]["loc"] == ["status"]
        assert {by_index[i]["id"] for i in (0, 1, 2)} == set(ids[:3])
        states = {i: (await verifier.get(f"/activities/{ids[i]}")).json() for i in range(6)}
        assert [(states[i]["status"], states[i]["approved_hours"]) for i in range(6)] == [
            ("verified", 3), ("verified", 2), ("rejected", None), ("submitted", None), ("submitted", None), ("submitted", None)]
        assert (await admin.get(f"/activities/{theirs['id']}")).json()["status"] == "submitted"

        # Sent again: what was decided is ignored, nothing is decided twice.
        again = (await verifier.post("/activities/verifications", json={"items": items[:3]})).json()
        assert (again["updated"], again["ignored"], [i["status"] for i in again["items"]]) == (0, 3, ["duplicate"] * 3)

        assert_problem(await verifier.post("/activities/verifications", json={"items": [items[0]] * 1001}), 422, ["body", "items"])
        assert_problem(await verifier.post("/activities/verifications", json=[items[0]]), 422)
        assert_problem(await verifier.post("/activities/verifications", json={"items": [], "dry_run": True}), 422, ["body", "dry_run"])
    [event] = [e for e in await events_of(stack, ids[1], 2) if e["type"] == "vmc.activity.verified"]
    assert event["data"]["approved_hours"] == 2


async def test_concurrent_decisions_on_one_entry_take_turns(admin: httpx.AsyncClient):
    s = await setting(admin)
    activity = await logged(admin, s)
    answers = await asyncio.gather(decide(admin, activity, "verify", {"approved_hours": 1}),
                                   decide(admin, activity, "reject", {"reason": "r"}),
                                   decide(admin, activity, "verify", {"approved_hours": 2}))
    assert sorted(a.status_code for a in answers) == [200, 409, 409], [a.text for a in answers]
    [winner] = [a.json() for a in answers if a.status_code == 200]
    assert (await admin.get(f"/activities/{activity['id']}")).json()["status"] == winner["status"]
