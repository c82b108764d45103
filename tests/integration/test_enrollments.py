"""Enrolments through the gateway: one open enrolment per volunteer and project, ending, isolation, events."""
from __future__ import annotations

import uuid

import httpx

from tests.harness import unique
from tests.integration.volunteer_factories import (
    assert_problem, create_org, create_project, org_key, register, registry_events, walk,
)


async def enrol(client: httpx.AsyncClient, volunteer_id: str, project_id: str, started_on: str = "2026-02-01", **extra) -> httpx.Response:
    return await client.post(f"/volunteers/{volunteer_id}/enrollments",
                             json={"project_id": project_id, "started_on": started_on, **extra})


async def test_one_open_enrolment_per_project_then_end_and_enrol_again(admin: httpx.AsyncClient, stack):
    org = await create_org(admin)
    project = await create_project(admin, org["id"])
    async with org_key(stack, admin, org["id"]) as as_org:
        volunteer = await register(as_org)
        first = await enrol(as_org, volunteer["id"], project["id"], role="facilitator")
        assert first.status_code == 201, first.text
        enrolment = first.json()
        assert {k: enrolment[k] for k in ("volunteer_id", "project_id", "role", "started_on", "ended_on", "end_reason")} == {
            "volunteer_id": volunteer["id"], "project_id": project["id"], "role": "facilitator",
            "started_on": "2026-02-01", "ended_on": None, "end_reason": None}
        problem = assert_problem(await enrol(as_org, volunteer["id"], project["id"], "2026-03-01"), 409)
        assert problem["existing_id"] == enrolment["id"]

        end_path = f"/enrollments/{enrolment['id']}/end"
        assert_problem(await as_org.post(end_path, json={"ended_on": "2026-01-31"}), 422, ["body", "ended_on"])
        assert_problem(await as_org.post(end_path, json={"ended_on": "2999-01-01"}), 422, ["body", "ended_on"])
        assert_problem(await as_org.post(end_path, json={"ended_on": "2026-02-30"}), 422, ["body", "ended_on"])
        assert_problem(await as_org.post(end_path, json={"ended_on": "2026-06-30", "status": "ended"}), 422, ["body", "status"])
        ended = await as_org.post(end_path, json={"ended_on": "2026-06-30", "end_reason": "moved to Siem Reap"})
        assert ended.status_code == 200, ended.text
        assert (ended.json()["ended_on"], ended.json()["end_reason"]) == ("2026-06-30", "moved to Siem Reap")
        assert_problem(await as_org.post(end_path, json={"ended_on": "2026-07-01"}), 409)

        again = await enrol(as_org, volunteer["id"], project["id"], "2026-09-01")
        assert again.status_code == 201, again.text
        listed = await walk(as_org, f"/volunteers/{volunteer['id']}/enrollments")
        assert [e["id"] for e in listed] == [enrolment["id"], again.json()["id"]]
        assert [e["id"] for e in await walk(as_org, f"/volunteers/{volunteer['id']}/enrollments", open="true")] == [again.json()["id"]]
        assert (await as_org.get(f"/enrollments/{enrolment['id']}")).json()["ended_on"] == "2026-06-30"

    started, ended_event = await registry_events(stack, lambda e: e["subject"] == enrolment["id"], count=2)
    assert (started["type"], ended_event["type"]) == ("vmc.enrollment.started", "vmc.enrollment.ended")
    assert ended_event["data"]["ended_on"] == "2026-06-30" and ended_event["data"]["volunteer_id"] == volunteer["id"]


async def test_enrolment_input_is_checked(admin: httpx.AsyncClient):
    org = await create_org(admin)
    project = await create_project(admin, org["id"], start_date="2026-03-01", end_date="2026-08-31")
    volunteer = await register(admin, organization_id=org["id"])
    for body, loc in [
        ({"project_id": str(uuid.uuid4()), "started_on": "2026-04-01"}, ["body", "project_id"]),
        ({"project_id": project["id"], "started_on": "2026-02-28"}, ["body", "started_on"]),
        ({"project_id": project["id"], "started_on": "2026-09-01"}, ["body", "started_on"]),
        ({"project_id": project["id"], "started_on": "2026-13-01"}, ["body", "started_on"]),
        ({"project_id": "not-a-uuid", "started_on": "2026-04-01"}, ["body", "project_id"]),
        ({"project_id": project["id"], "started_on": "2026-04-01", "role": "x" * 101}, ["body", "role"]),
        ({"project_id": project["id"], "started_on": "2026-04-01", "volunteer_id": volunteer["id"]}, ["body", "volunteer_id"]),
        ({"project_id": project["id"]}, ["body", "started_on"]),
    ]:
        assert_problem(await admin.post(f"/volunteers/{volunteer['id']}/enrollments", json=body), 422, loc)
    assert_problem(await enrol(admin, str(uuid.uuid4()), project["id"], "2026-04-01"), 404)
    assert_problem(await admin.post(f"/enrollments/{uuid.uuid4()}/end", json={"ended_on": "2026-04-01"}), 404)
    assert await walk(admin, f"/volunteers/{volunteer['id']}/enrollments") == []


async def test_idempotency_key_replays_an_enrolment(admin: httpx.AsyncClient):
    org = await create_org(admin)
    project, volunteer = await create_project(admin, org["id"]), await register(admin, organization_id=org["id"])
    key = {"Idempotency-Key": unique("idem")}
    body = {"project_id": project["id"], "started_on": "2026-05-01"}
    first = await admin.post(f"/volunteers/{volunteer['id']}/enrollments", json=body, headers=key)
    again = await admin.post(f"/volunteers/{volunteer['id']}/enrollments", json=body, headers=key)
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert len(await walk(admin, f"/volunteers/{volunteer['id']}/enrollments")) == 1


async def test_another_organisations_enrolments_are_404(admin: httpx.AsyncClient, stack):
    org_a, org_b = await create_org(admin), await create_org(admin)
    project = await create_project(admin, org_b["id"])
    theirs = await register(admin, organization_id=org_b["id"])
    enrolment = (await enrol(admin, theirs["id"], project["id"])).json()
    async with org_key(stack, admin, org_a["id"]) as as_a:
        assert_problem(await as_a.get(f"/enrollments/{enrolment['id']}"), 404)
        assert_problem(await as_a.post(f"/enrollments/{enrolment['id']}/end", json={"ended_on": "2026-03-01"}), 404)
        assert_problem(await as_a.get(f"/volunteers/{theirs['id']}/enrollments"), 404)
        assert_problem(await enrol(as_a, theirs["id"], project["id"], "2026-03-01"), 404)
    assert (await admin.get(f"/enrollments/{enrolment['id']}")).json()["ended_on"] is None
