"""The analytics figures through the gateway, built from events of the running stack: activities logged
and decided through the API appear in /analytics/* with exact values (hours placed where they
happened, volunteers where they live, age on the activity date), as JSON, CSV and HXL; a key of an
organisation sees its tree only and, without analytics:unsuppressed, small cells hidden; bad questions
are 422s listing what is allowed."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import httpx
import pytest

from tests.api import assert_problem
from tests.conftest import eventually
from tests.factories import create_enrollment, create_org, create_project, org_key, register
from tests.integration.activity_factories import Setting, activity_body, log

SOFT = {"communication": 3, "teamwork": 3, "leadership": 2, "problem_solving": 3, "critical_thinking": 2,
        "self_confidence": 2}


@dataclass
class Figures:
    """An organisation's project with two volunteers whose activities are logged and decided."""

    org: dict
    project: dict
    program_code: str
    female: dict
    male: dict


async def created(answer: httpx.Response) -> dict:
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


async def figures_of(client: httpx.AsyncClient, path: str, **params) -> dict:
    answer = await client.get(f"/analytics/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
async def world(stack) -> Figures:
    """F, born 15 Mar 2008 and living in 12 (Phnom Penh), 17 on the day she worked; M, born 1 Jan 2000,
    living in 08 (Kandal), 26. Verified: F 2.5 of 3 h in 12, M 2 h in 17; M's 4 h in 12 stay submitted;
    F's 1 h is rejected. Each entry reached 4 women, 3 men and 2 children (activity_body's default)."""
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {stack.admin_key}"},
                                 timeout=30) as admin:
        org = await create_org(admin)
        project = await create_project(admin, org["id"])
        program = (await admin.get(f"/programs/{project['program_id']}")).json()
        female = await register(admin, organization_id=org["id"], sex="female", date_of_birth="2008-03-15",
                                residence_province="12")
        male = await register(admin, organization_id=org["id"], sex="male", date_of_birth="2000-01-01",
                              residence_province="08")
        for volunteer in (female, male):
            await create_enrollment(admin, volunteer["id"], project["id"])

        async def entry(volunteer: dict, day: str, hours: float, place: str) -> dict:
            body = activity_body(Setting(org, project, volunteer), date=day, hours=hours, location_code=place)
            return await created(await log(admin, body))

        f1 = await entry(female, "2026-03-10", 3, "12")
        m1 = await entry(male, "2026-03-11", 2, "17")
        await entry(male, "2026-03-12", 4, "12")
        f2 = await entry(female, "2026-03-13", 1, "12")
        await created(await admin.post(f"/activities/{f1['id']}/verify", json={"approved_hours": 2.5}))
        await created(await admin.post(f"/activities/{m1['id']}/verify", json={}))
        await created(await admin.post(f"/activities/{f2['id']}/reject", json={"reason": "not volunteering"}))
        for volunteer, endline in ((female, 4), (male, 3)):
            for phase, taken_on, score in (("baseline", "2026-03-01", 2), ("endline", "2026-06-01", endline)):
                await created(await admin.post("/assessments", json={
                    "volunteer_id": volunteer["id"], "instrument": "soft-skills-v1", "phase": phase,
                    "taken_on": taken_on, "scores": {**SOFT, "communication": score}}))
        world = Figures(org, project, program["code"], female, male)

        async def arrived() -> bool:
            # A 404 until analytics has heard of the project and organisation.
            overview = await admin.get("/analytics/overview", params={"project": project["id"], "status": "all"})
            skills = await admin.get("/analytics/skills", params={"instrument": "soft-skills-v1", "organization": org["id"]})
            return (overview.status_code == 200 and overview.json()["rows"][0]["activities"] == 3
                    and overview.json()["rows"][0]["hours"] == 8.5
                    and skills.status_code == 200 and skills.json()["rows"][0]["volunteers"] == 2)

        await eventually(arrived, timeout=30, what="the logged and decided activities and assessments in analytics")
        return world


async def test_overview_counts_verified_figures(admin: httpx.AsyncClient, world: Figures):
    answer = await figures_of(admin, "overview", project=world.project["id"])
    assert answer["group_by"] == [] and answer["as_of"]
    assert answer["rows"] == [{"volunteers": 2, "hours": 4.5, "activities": 2, "beneficiaries": 14,
                               "beneficiaries_children": 4, "suppressed": False}]


async def test_hours_are_placed_where_they_happened_and_cut_any_way(admin: httpx.AsyncClient, world: Figures):
    mine = {"project": world.project["id"]}
    by_province = await figures_of(admin, "hours", group_by="province", **mine)
    assert by_province["rows"] == [
        {"province": "12", "hours": 2.5, "activities": 1, "volunteers": 1, "suppressed": False},
        {"province": "17", "hours": 2.0, "activities": 1, "volunteers": 1, "suppressed": False}]
    everything = await figures_of(admin, "hours", group_by="province", status="all", **mine)
    assert [(r["province"], r["hours"], r["activities"], r["volunteers"]) for r in everything["rows"]] == [
        ("12", 6.5, 2, 2), ("17", 2.0, 1, 1)]
    # Repeated group_by, the programme by code, the ISO week and the age on the activity date.
    cut = await admin.get(
        "/analytics/hours", params=[("group_by", "program,week"), ("group_by", "sex,age_band"),
                                    ("organization", world.org["id"])])
    assert cut.status_code == 200, cut.text
    assert cut.json()["group_by"] == ["program", "week", "sex", "age_band"]
    assert [{k: v for k, v in r.items() if k not in ("activities", "volunteers", "suppressed")}
            for r in cut.json()["rows"]] == [
        {"program": world.program_code, "week": "2026-W11", "sex": "female", "age_band": "15-17", "hours": 2.5},
        {"program": world.program_code, "week": "2026-W11", "sex": "male", "age_band": "25-30", "hours": 2.0}]
    filtered = await figures_of(admin, "hours", program=world.program_code, province="17", month="2026-03",
                                **{"from": "2026-03-11", "to": "2026-03-11"})
    assert [(r["hours"], r["volunteers"]) for r in filtered["rows"]] == [(2.0, 1)]


async def test_volunteers_are_counted_where_they_live(admin: httpx.AsyncClient, world: Figures):
    answer = await figures_of(admin, "volunteers", group_by="province,sex", project=world.project["id"])
    assert answer["rows"] == [
        {"province": "08", "sex": "male", "volunteers": 1, "suppressed": False},
        {"province": "12", "sex": "female", "volunteers": 1, "suppressed": False}]


async def test_beneficiaries(admin: httpx.AsyncClient, world: Figures):
    answer = await figures_of(admin, "beneficiaries", group_by="quarter", project=world.project["id"])
    assert answer["rows"] == [{"quarter": "2026-Q1", "beneficiaries_female": 8, "beneficiaries_male": 6,
                               "beneficiaries_other": 0, "beneficiaries_children": 4, "beneficiaries": 14,
                               "activities": 2, "volunteers": 2, "suppressed": False}]


async def test_skills_change_by_hours_band(admin: httpx.AsyncClient, world: Figures):
    # Totals: baseline 2+3+2+3+2+2 = 14 for both; endlines 16 (F) and 15 (M). Both under 20 verified hours.
    answer = await figures_of(admin, "skills", instrument="soft-skills-v1", group_by="hours_band",
                              organization=world.org["id"])
    [row] = answer["rows"]
    assert (row["hours_band"], row["volunteers"], row["baseline_mean"], row["endline_mean"], row["mean_change"]) == (
        "0-19", 2, 14.0, 15.5, 1.5)
    assert row["items"]["communication"] == {"baseline_mean": 2.0, "endline_mean": 3.5, "mean_change": 1.5}
    assert row["items"]["teamwork"] == {"baseline_mean": 3.0, "endline_mean": 3.0, "mean_change": 0.0}


async def test_skills_by_programme_and_hours_band_asked_nationally_come_from_the_kept_totals(admin: httpx.AsyncClient,
                                                                                              world: Figures):
    """Asked nationally over all dates, skills by programme × hours band is read from the totals the consumer
    keeps on write (`skill_totals`), not from the pairs: the world's programme (its own) gives the figures above."""
    answer = await figures_of(admin, "skills", instrument="soft-skills-v1", group_by="program,hours_band",
                              program=world.program_code)
    [row] = answer["rows"]
    assert (row["program"], row["hours_band"], row["volunteers"], row["baseline_mean"], row["endline_mean"],
            row["mean_change"]) == (world.program_code, "0-19", 2, 14.0, 15.5, 1.5)
    assert row["items"]["communication"] == {"baseline_mean": 2.0, "endline_mean": 3.5, "mean_change": 1.5}
    assert row["items"]["teamwork"] == {"baseline_mean": 3.0, "endline_mean": 3.0, "mean_change": 0.0}


async def test_csv_and_hxl(admin: httpx.AsyncClient, world: Figures):
    params = {"group_by": "province", "project": world.project["id"]}
    answer = await admin.get("/analytics/hours", params=params, headers={"Accept": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.text == ("province,hours,activities,volunteers,suppressed\r\n12,2.5,1,1,false\r\n"
                           "17,2.0,1,1,false\r\n")
    hxl = await admin.get("/analytics/hours", params={**params, "hxl": "true"})
    assert hxl.status_code == 200 and hxl.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(hxl.text)))
    assert rows[1] == ["#adm1+code", "#indicator+hours", "#indicator+activities", "#indicator+volunteers",
                       "#meta+suppressed"]
    assert rows[2:] == [["12", "2.5", "1", "1", "false"], ["17", "2.0", "1", "1", "false"]]


async def test_a_key_sees_its_tree_suppressed_and_nothing_of_others(admin: httpx.AsyncClient, stack, world: Figures):
    async with org_key(stack, admin, world.org["id"], ["analytics:read"]) as own:
        # Its whole view is the two volunteers: fewer than k = 5, so hidden, dimension values kept.
        answer = await figures_of(own, "hours", group_by="province")
        assert answer["rows"] == [
            {"province": "12", "hours": None, "activities": None, "volunteers": None, "suppressed": True},
            {"province": "17", "hours": None, "activities": None, "volunteers": None, "suppressed": True}]
        overview = await figures_of(own, "overview")
        assert overview["organizations"] == 1 and overview["rows"][0]["suppressed"] is True
    other = await create_org(admin)
    async with org_key(stack, admin, other["id"], ["analytics:read"]) as stranger:
        assert (await figures_of(stranger, "hours", status="all"))["rows"][0]["suppressed"] is True
        for name, value in (("organization", world.org["id"]), ("project", world.project["id"])):
            assert_problem(await stranger.get("/analytics/hours", params={name: value}), 404)
        assert_problem(await stranger.get("/analytics/skills", params={"organization": world.org["id"]}), 404)


@pytest.mark.parametrize(("path", "params", "loc", "allowed"), [
    ("hours", {"group_by": "province,colour"}, "group_by", "age_band"),
    ("hours", {"colour": "red"}, "colour", "status"),
    ("volunteers", {"group_by": "commune"}, "group_by", "district"),
    ("hours", {"status": "approved"}, "status", "all"),
    ("hours", {"from": "2026-03-02", "to": "2026-03-01"}, "from", None),
    ("hours", {"from": "2026-02-30"}, "from", None),
    ("hours", {"week": "2026-W54"}, "week", None),
    ("skills", {"instrument": "juggling-v1"}, "instrument", "soft-skills-v1"),
    ("skills", {}, "instrument", "soft-skills-v1"),
    ("overview", {"hxl": "maybe"}, "hxl", None),
])
async def test_bad_questions_are_422_listing_what_is_allowed(admin: httpx.AsyncClient, world: Figures, path, params,
                                                             loc, allowed):
    problem = assert_problem(await admin.get(f"/analytics/{path}", params=params), 422, ["query", loc])
    if allowed:
        error = next(e for e in problem["errors"] if e["loc"] == ["query", loc])
        assert allowed in error["allowed"] and allowed in problem["detail"], problem
