"""Programmes and projects through the gateway: creation rules, isolation between organisations, events."""
from __future__ import annotations

import uuid

import httpx
import pytest

from services.registry.settings import GDY_ORGANIZATION_ID
from tests.eventlog import find_events
from tests.api import assert_problem, walk
from tests.factories import (
    create_org, create_program, create_project, fresh_district, org_key, program_code, project_body,
)
from tests.harness import unique

# ---- programmes ---------------------------------------------------------------------------------
async def test_programmes_are_national_with_unique_codes(stack, admin: httpx.AsyncClient, broker):
    program = await create_program(admin, name_km="កម្មវិធី")
    assert set(program) == {"id", "code", "name", "name_km", "created_at", "updated_at"}
    assert (await admin.get(f"/programs/{program['id']}")).json() == program
    assert program in await walk(admin, "/programs")
    assert await walk(admin, "/programs", code=program["code"]) == [program]

    assert_problem(await admin.post("/programs", json={"code": program["code"], "name": "again"}), 409, ["body", "code"])
    assert_problem(await admin.post("/programs", json={"code": "vmc", "name": "x"}), 422, ["body", "code"], "upper-case")
    assert_problem(await admin.post("/programs", json={"code": "A" * 21, "name": "x"}), 422, ["body", "code"])
    assert_problem(await admin.post("/programs", json={"code": program_code()}), 422, ["body", "name"])
    assert_problem(await admin.post("/programs", json={"code": program_code(), "name": "x", "id": str(uuid.uuid4())}),
                   422, ["body", "id"], "unknown field")
    assert_problem(await admin.get(f"/programs/{uuid.uuid4()}"), 404)

    org = await create_org(admin)
    async with org_key(stack, admin, org["id"]) as local:
        assert_problem(await local.post("/programs", json={"code": program_code(), "name": "x"}), 403, says="national")
        assert (await local.get(f"/programs/{program['id']}")).status_code == 200

    [event] = await find_events(broker.bootstrap, "vmc.registry.v1",
                                lambda e: e["type"] == "vmc.program.created" and e["subject"] == program["id"])
    assert event["data"] == {"id": program["id"], "code": program["code"]}


# ---- projects -----------------------------------------------------------------------------------
async def test_project_lifecycle_filters_and_events(admin: httpx.AsyncClient, broker):
    program = await create_program(admin)
    org = await create_org(admin)
    project = await create_project(admin, program_id=program["id"], organization_id=org["id"], focus_areas=["health", "education", "health"])
    assert project["focus_areas"] == ["education", "health"]
    assert project["location_codes"] == ["12", "17"]
    assert (await admin.get(f"/projects/{project['id']}")).json() == project

    patched = await admin.patch(f"/projects/{project['id']}", json={"end_date": "2027-06-30", "location_codes": ["12"]})
    assert patched.status_code == 200, patched.text
    updated = patched.json()
    assert (updated["end_date"], updated["location_codes"], updated["name"]) == ("2027-06-30", ["12"], project["name"])
    assert updated["updated_at"] > project["updated_at"]
    assert (await admin.get(f"/projects/{project['id']}")).json() == updated

    def ids(items: list[dict]) -> set[str]:
        return {item["id"] for item in items}

    assert ids(await walk(admin, "/projects", program_id=program["id"])) == {project["id"]}
    assert ids(await walk(admin, "/projects", organization_id=org["id"])) == {project["id"]}
    assert ids(await walk(admin, "/projects", program_id=program["id"], focus_area="health")) == {project["id"]}
    assert ids(await walk(admin, "/projects", program_id=program["id"], focus_area="climate_change")) == set()
    assert ids(await walk(admin, "/projects", program_id=program["id"], location="12")) == {project["id"]}
    assert ids(await walk(admin, "/projects", program_id=program["id"], location="17")) == set()
    assert ids(await walk(admin, "/projects", program_id=program["id"], updated_since=updated["updated_at"])) == {project["id"]}
    assert_problem(await admin.get("/projects", params={"focus_area": "sports"}), 422, ["query", "focus_area"])
    assert_problem(await admin.get("/projects", params={"location": "1"}), 422, ["query", "location"])

    created, changed = await find_events(
        broker.bootstrap, "vmc.registry.v1",
        lambda e: e["type"] in ("vmc.project.created", "vmc.project.updated") and e["subject"] == project["id"], count=2)
    assert created["type"] == "vmc.project.created" and changed["type"] == "vmc.project.updated"
    assert changed["data"] == {
        "id": project["id"], "program_id": program["id"], "organization_id": org["id"],
        "focus_areas": ["education", "health"], "location_codes": ["12"],
        "start_date": "2026-01-15", "end_date": "2027-06-30",
    }
    assert "name" not in created["data"]


async def test_location_filter_matches_places_below_the_code(admin: httpx.AsyncClient):
    program = await create_program(admin)
    org = await create_org(admin)
    district = await fresh_district(admin)
    csv = f"code,level,name_en,name_km,parent_code\n{district},district,D,,{district[:2]}\n{district}01,commune,C,,{district}\n"
    imported = await admin.post("/locations/import", content=csv.encode(), headers={"Content-Type": "text/csv"})
    assert imported.json()["created"] == 2
    project = await create_project(admin, program_id=program["id"], organization_id=org["id"], location_codes=[f"{district}01"])
    for prefix in (district[:2], district, f"{district}01"):
        assert [p["id"] for p in await walk(admin, "/projects", program_id=program["id"], location=prefix)] == [project["id"]]
    assert await walk(admin, "/projects", program_id=program["id"], location=f"{district}02") == []


async def test_organisations_see_and_change_only_their_own_projects(stack, admin: httpx.AsyncClient):
    program = await create_program(admin)
    org_a, org_b = await create_org(admin), await create_org(admin)
    child_of_a = await create_org(admin, parent_id=org_a["id"])
    theirs = await create_project(admin, program_id=program["id"], organization_id=org_b["id"])

    async with org_key(stack, admin, org_a["id"]) as a:
        assert_problem(await a.get(f"/projects/{theirs['id']}"), 404)
        assert_problem(await a.patch(f"/projects/{theirs['id']}", json={"name": "taken over"}), 404)
        assert theirs["id"] not in {p["id"] for p in await walk(a, "/projects", program_id=program["id"])}
        assert await walk(a, "/projects", organization_id=org_b["id"]) == []
        assert_problem(await a.post("/projects", json=project_body(program["id"], org_b["id"])), 422, ["body", "organization_id"])

        own = await create_project(a, program_id=program["id"], organization_id=org_a["id"])
        below = await create_project(a, program_id=program["id"], organization_id=child_of_a["id"])
        assert {p["id"] for p in await walk(a, "/projects", program_id=program["id"])} == {own["id"], below["id"]}
        assert_problem(await a.patch(f"/projects/{own['id']}", json={"organization_id": org_b["id"]}), 422,
                       ["body", "organization_id"])
        moved = await a.patch(f"/projects/{own['id']}", json={"organization_id": child_of_a["id"]})
        assert moved.status_code == 200 and moved.json()["organization_id"] == child_of_a["id"]

    async with org_key(stack, admin, child_of_a["id"]) as child:
        # A child sees its own projects, not its parent's.
        assert {p["id"] for p in await walk(child, "/projects", program_id=program["id"])} == {own["id"], below["id"]}
    async with org_key(stack, admin, org_a["id"], scopes=["registry:read"]) as reader:
        assert_problem(await reader.post("/projects", json=project_body(program["id"], org_a["id"])), 403)
    assert (await admin.get(f"/projects/{theirs['id']}")).json()["name"] == theirs["name"]


@pytest.mark.parametrize(("overrides", "loc", "says"), [
    ({"program_id": str(uuid.uuid4())}, ["body", "program_id"], "programme not found"),
    ({"organization_id": str(uuid.uuid4())}, ["body", "organization_id"], "not found"),
    ({"location_codes": ["12", "1299"]}, ["body", "location_codes"], "1299"),
    ({"location_codes": ["12a"]}, ["body", "location_codes"], "gazetteer code"),
    ({"start_date": "2026-02-30"}, ["body", "start_date"], None),
    ({"end_date": "2026-01-01"}, ["body", "end_date"], "on or after"),
    ({"name": "x" * 301}, ["body", "name"], "300"),
    ({"name": None, "name_km": None}, ["body", "name"], "name or name_km"),
    ({"focus_areas": ["sports"]}, ["body", "focus_areas", 0], None),
    ({"colour": "blue"}, ["body", "colour"], "unknown field"),
    ({"id": str(uuid.uuid4())}, ["body", "id"], "unknown field"),
    ({"created_at": "2026-01-01T00:00:00Z"}, ["body", "created_at"], "unknown field"),
])
async def test_bad_project_input_is_422_naming_the_field(admin: httpx.AsyncClient, overrides, loc, says):
    program = await create_program(admin)
    body = {**project_body(program["id"], GDY_ORGANIZATION_ID), **overrides}
    assert_problem(await admin.post("/projects", json=body), 422, loc, says)
    assert await walk(admin, "/projects", program_id=program["id"]) == []


async def test_bad_project_patches_are_422_and_change_nothing(admin: httpx.AsyncClient):
    program = await create_program(admin)
    project = await create_project(admin, program_id=program["id"], organization_id=GDY_ORGANIZATION_ID)
    for body, loc in [
        ({"start_date": None}, ["body", "start_date"]),
        ({"start_date": "2027-02-01"}, ["body", "end_date"]),  # would end before it starts
        ({"updated_at": "2026-01-01T00:00:00Z"}, ["body", "updated_at"]),
        ({"program_id": str(uuid.uuid4())}, ["body", "program_id"]),
        ({"location_codes": ["99"]}, ["body", "location_codes"]),
        ({"name": None, "name_km": None}, ["body", "name"]),
    ]:
        assert_problem(await admin.patch(f"/projects/{project['id']}", json=body), 422, loc)
    assert (await admin.get(f"/projects/{project['id']}")).json() == project
    assert_problem(await admin.patch(f"/projects/{uuid.uuid4()}", json={"name": "x"}), 404)


async def test_project_create_is_idempotent_per_key(admin: httpx.AsyncClient):
    program = await create_program(admin)
    body = project_body(program["id"], GDY_ORGANIZATION_ID)
    key = {"Idempotency-Key": unique("idem")}
    first, again = await admin.post("/projects", json=body, headers=key), await admin.post("/projects", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert_problem(await admin.post("/projects", json={**body, "name": "other"}, headers=key), 409)
    assert [p["id"] for p in await walk(admin, "/projects", program_id=program["id"])] == [first.json()["id"]]
