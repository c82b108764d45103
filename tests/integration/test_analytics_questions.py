"""Issue 17 audited through the session's stack: a correction, a merge and an erasure change figures already
counted; the skills change per verified-hours band answered by one call; a key that is not national sees its
organisation tree and nothing of a sibling or a parent, even when it may see small cells; "today" is Phnom
Penh's; bad questions, to the figures and to the DHIS2 export, are a 4xx problem+json saying what is allowed,
never a 500."""
from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.analytics.dhis2 import PERIOD_FORMS
from shared.caller import GDY_ORGANIZATION_ID
from tests.api import assert_problem
from tests.conftest import eventually
from tests.factories import create_enrollment, create_org, create_project, org_key, register
from tests.integration.activity_factories import Setting, activity_body, log
from tests.integration.analytics_answers import wait_settled

SOFT = ("communication", "teamwork", "leadership", "problem_solving", "critical_thinking", "self_confidence")
UNSUPPRESSED = ["analytics:read", "analytics:unsuppressed"]


async def volunteer_of(admin: httpx.AsyncClient, org: dict, project: dict) -> dict:
    volunteer = await register(admin, organization_id=org["id"], date_of_birth="2000-01-01", residence_province="12")
    await create_enrollment(admin, volunteer["id"], project["id"])
    return volunteer


async def logged(admin: httpx.AsyncClient, setting: Setting, day: str, hours: float, verify: bool = True) -> dict:
    answer = await log(admin, activity_body(setting, date=day, hours=hours, location_code="12"))
    assert answer.status_code == 201, answer.text
    if verify:
        verified = await admin.post(f"/activities/{answer.json()['id']}/verify", json={})
        assert verified.status_code == 200, verified.text
    return answer.json()


async def figures(client: httpx.AsyncClient, path: str, **params) -> dict:
    answer = await client.get(f"/analytics/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


# ---- Deliver 3: skills by verified-hours band ------------------------------------------------------------------
async def assess(admin: httpx.AsyncClient, volunteer: dict, baseline: dict, endline: dict) -> None:
    for phase, taken_on, scores in (("baseline", "2026-03-01", baseline), ("endline", "2026-06-01", endline)):
        recorded = await admin.post("/assessments", json={"volunteer_id": volunteer["id"], "instrument": "soft-skills-v1",
                                                          "phase": phase, "taken_on": taken_on, "scores": scores})
        assert recorded.status_code == 201, recorded.text


def every(score: int, **items: int) -> dict:
    return {item: items.get(item, score) for item in SOFT}


async def test_skills_change_per_verified_hours_band_in_one_call(admin: httpx.AsyncClient):
    """Verified hours 19.5 (and 10 h still submitted, which do not count), 20, 49.5 and 50: the bands' edges.
    Baselines all 2 (total 12); endlines 3, 4, 5 and 2 but for communication 5."""
    org = await create_org(admin)
    project = await create_project(admin, org["id"])
    plans = {"light": [12, 7.5], "twenty": [10, 10], "almost_fifty": [24, 24, 1.5], "fifty": [24, 24, 2]}
    endlines = {"light": every(3), "twenty": every(4), "almost_fifty": every(2, communication=5), "fifty": every(5)}
    people = {name: await volunteer_of(admin, org, project) for name in plans}
    jobs = [logged(admin, Setting(org, project, people[name]), f"2026-03-{10 + i:02d}", hours)
            for name, hours_list in plans.items() for i, hours in enumerate(hours_list)]
    jobs.append(logged(admin, Setting(org, project, people["light"]), "2026-03-20", 10, verify=False))
    jobs += [assess(admin, people[name], every(2), endlines[name]) for name in plans]
    await asyncio.gather(*jobs)

    async def every_entry_counted() -> bool:
        verified = await admin.get("/analytics/hours", params={"organization": org["id"]})
        claimed = await admin.get("/analytics/hours", params={"organization": org["id"], "status": "all"})
        return (verified.status_code == claimed.status_code == 200 and bool(verified.json()["rows"])
                and (verified.json()["rows"][0]["hours"], claimed.json()["rows"][0]["activities"]) == (139.0, 11))

    # The verified 139 h and the submitted entry in analytics first: the bands must not count the latter.
    await eventually(every_entry_counted, 30, what="the ten verified entries and the submitted one in analytics")
    params = {"instrument": "soft-skills-v1", "group_by": "hours_band", "organization": org["id"]}
    expected = [("0-19", 1, 12.0, 18.0, 6.0), ("20-49", 2, 12.0, 19.5, 7.5), ("50+", 1, 12.0, 30.0, 18.0)]
    answer: dict = {}

    def summary() -> list[tuple]:
        return [(r["hours_band"], r["volunteers"], r["baseline_mean"], r["endline_mean"], r["mean_change"])
                for r in answer.get("rows", ())]

    async def every_hour_and_score_counted() -> bool:
        nonlocal answer
        got = await admin.get("/analytics/skills", params=params)
        answer = got.json() if got.status_code == 200 else {}
        return summary() == expected

    try:
        await eventually(every_hour_and_score_counted, 30, what="the four volunteers' hours and assessments")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answer: {summary()}") from None
    assert answer["as_of"] and answer["group_by"] == ["hours_band"]
    items = {r["hours_band"]: r["items"] for r in answer["rows"]}
    assert set(items["20-49"]) == set(SOFT)
    assert items["20-49"]["communication"] == {"baseline_mean": 2.0, "endline_mean": 4.5, "mean_change": 2.5}
    assert items["20-49"]["teamwork"] == {"baseline_mean": 2.0, "endline_mean": 3.0, "mean_change": 1.0}
    assert items["50+"]["leadership"] == {"baseline_mean": 2.0, "endline_mean": 5.0, "mean_change": 3.0}
    # A band is also a filter.
    only = await figures(admin, "skills", **params, hours_band="50+")
    assert [(r["hours_band"], r["volunteers"]) for r in only["rows"]] == [("50+", 1)]


# ---- Deliver 1: a figure already counted changes with its activity and its volunteer -----------------------------
async def test_a_correction_a_merge_and_an_erasure_change_the_figures_already_counted(stack, admin: httpx.AsyncClient):
    """W (female) has 2 h verified; D (male) 3 h verified and 1 h submitted. Correcting the submitted entry to
    4 h moves the claimed figures; merging D into W leaves one volunteer, every hour hers (D's count as a
    woman's); erasing W changes nothing in the figures."""
    org = await create_org(admin)
    project = await create_project(admin, org["id"])
    w, d = [await register(admin, organization_id=org["id"], sex=sex, date_of_birth="2000-01-01",
                           residence_province="12") for sex in ("female", "male")]
    for volunteer in (w, d):
        await create_enrollment(admin, volunteer["id"], project["id"])
    await logged(admin, Setting(org, project, w), "2026-03-10", 2.0)
    await logged(admin, Setting(org, project, d), "2026-03-11", 3.0)
    submitted = await logged(admin, Setting(org, project, d), "2026-03-12", 1.0, verify=False)
    mine = {"organization": org["id"]}

    async def now(**params) -> list[tuple]:
        answer = await admin.get("/analytics/hours", params={**mine, **params})
        if answer.status_code != 200:
            return []
        return [tuple(v for k, v in r.items() if k != "suppressed") for r in answer.json()["rows"]]

    async def becomes(expected: list[tuple], what: str, **params) -> None:
        await eventually(lambda: _equals(now(**params), expected), 30, what=what)

    await becomes([(5.0, 2, 2)], "both verified entries counted")
    await becomes([(6.0, 3, 2)], "the submitted entry counted under status=all", status="all")
    corrected = await admin.patch(f"/activities/{submitted['id']}", json={"hours": 4.0})
    assert corrected.status_code == 200, corrected.text
    await becomes([(9.0, 3, 2)], "the correction replacing the claimed hour", status="all")

    merged = await admin.post(f"/volunteers/{w['id']}/merge", json={"duplicate_id": d["id"]})
    assert merged.status_code == 200, merged.text
    await becomes([(5.0, 2, 1)], "one volunteer after the merge")
    await becomes([("female", 9.0, 3, 1)], "the duplicate's hours counted as the survivor's", status="all",
                  group_by="sex")
    assert (await admin.delete(f"/volunteers/{w['id']}")).status_code == 204
    # Erasure is not an event analytics shows: wait for it to have reached analytics by the registry's log.
    await wait_settled(stack)
    assert await now(group_by="sex", status="all") == [("female", 9.0, 3, 1)]
    assert await now() == [(5.0, 2, 1)]


async def _equals(found, expected) -> bool:
    return await found == expected


# ---- Deliver 2: a key that is not national sees its tree only ----------------------------------------------------
async def test_a_key_sees_its_tree_and_no_figure_of_a_sibling_or_parent(stack, admin: httpx.AsyncClient):
    """P (below GDY) has A and B below it, A has A1. Each runs a project with one volunteer's verified entry:
    P 8 h, A 1 h, A1 2 h, B 4 h. Keys of A and B holding analytics:unsuppressed (nothing hidden) see their trees."""
    parent = await create_org(admin, parent_id=GDY_ORGANIZATION_ID)
    a = await create_org(admin, parent_id=parent["id"])
    a1 = await create_org(admin, parent_id=a["id"])
    b = await create_org(admin, parent_id=parent["id"])
    hours = {"P": 8.0, "A": 1.0, "A1": 2.0, "B": 4.0}
    orgs = {"P": parent, "A": a, "A1": a1, "B": b}

    async def unit(name: str) -> dict:
        project = await create_project(admin, orgs[name]["id"])
        volunteer = await volunteer_of(admin, orgs[name], project)
        await logged(admin, Setting(orgs[name], project, volunteer), "2026-03-10", hours[name])
        return project

    projects = dict(zip(hours, await asyncio.gather(*(unit(name) for name in hours))))

    async def all_counted() -> bool:
        answer = await admin.get("/analytics/hours", params={"project": [p["id"] for p in projects.values()]})
        return answer.status_code == 200 and answer.json()["rows"][0]["hours"] == sum(hours.values())

    await eventually(all_counted, 30, what="the four organisations' hours in analytics")
    async with org_key(stack, admin, a["id"], UNSUPPRESSED) as of_a, org_key(stack, admin, b["id"], UNSUPPRESSED) as of_b:
        by_org = await figures(of_a, "hours", group_by="organization")
        assert {r["organization"]: r["hours"] for r in by_org["rows"]} == {a["id"]: 1.0, a1["id"]: 2.0}
        by_project = await figures(of_a, "volunteers", group_by="project")
        assert {r["project"]: r["volunteers"] for r in by_project["rows"]} == {
            projects["A"]["id"]: 1, projects["A1"]["id"]: 1}
        assert (await figures(of_a, "overview"))["rows"] == [{"volunteers": 2, "hours": 3.0, "activities": 2,
                                                               "beneficiaries": 14, "beneficiaries_children": 4,
                                                               "suppressed": False}]
        export = (await of_a.get("/analytics/export/dhis2", params={"period": "202603"})).json()
        assert [v["value"] for v in export["dataValues"] if v["dataElement"] == "VmcActivity"] == ["2"], export
        for name in ("P", "B"):  # a parent's or a sibling's figures: as if they did not exist
            assert_problem(await of_a.get("/analytics/hours", params={"organization": orgs[name]["id"]}), 404)
            assert_problem(await of_a.get("/analytics/hours", params={"project": projects[name]["id"]}), 404)
        by_org = await figures(of_b, "beneficiaries", group_by="organization")
        assert [(r["organization"], r["activities"]) for r in by_org["rows"]] == [(b["id"], 1)]


# ---- Deliver 2: today is Phnom Penh's ------------------------------------------------------------------------------
async def test_today_is_phnom_penhs_date(admin: httpx.AsyncClient):
    """Between 17:00 and 24:00 UTC Phnom Penh's date is UTC's tomorrow: an entry of Phnom Penh's today is in
    `day=today` and `from=today&to=today`, and labelled with that date."""
    org = await create_org(admin)
    project = await create_project(admin, org["id"], end_date=None)
    volunteer = await volunteer_of(admin, org, project)
    today = datetime.now(ZoneInfo("Asia/Phnom_Penh")).date().isoformat()
    await logged(admin, Setting(org, project, volunteer), today, 2.0)

    async def counted() -> bool:
        answer = await admin.get("/analytics/hours", params={"organization": org["id"], "day": "today"})
        return answer.status_code == 200 and bool(answer.json()["rows"]) and answer.json()["rows"][0]["activities"] == 1

    await eventually(counted, 30, what="today's entry in analytics")
    by_day = await figures(admin, "hours", organization=org["id"], group_by="day", **{"from": "today", "to": "today"})
    assert [(r["day"], r["hours"]) for r in by_day["rows"]] == [(today, 2.0)]


# ---- Bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("period", ["202613", "2026Q5", "2026W54", "26", "2026-03", "2026W00", "202600", "2026Q0",
                                    "20263"])
async def test_a_malformed_dhis2_period_lists_the_accepted_forms(admin: httpx.AsyncClient, period: str):
    problem = assert_problem(await admin.get("/analytics/export/dhis2", params={"period": period}), 422,
                             ["query", "period"])
    [error] = [e for e in problem["errors"] if e["loc"] == ["query", "period"]]
    assert error["allowed"] == list(PERIOD_FORMS), problem


@pytest.mark.parametrize(("path", "params", "loc", "allowed"), [
    # closed lists: the values allowed are listed
    ("hours", {"sex": "robot"}, "sex", ["female", "male", "other", "undisclosed", "unknown"]),
    ("volunteers", {"age_band": "12-13"}, "age_band", ["10-14", "15-17", "18-24", "25-30", "31+", "unknown"]),
    ("skills", {"instrument": "soft-skills-v1", "hours_band": "10-20"}, "hours_band", ["0-19", "20-49", "50+"]),
    ("hours", {"group_by": "hours_band"}, "group_by", ["province", "district", "program"]),
    ("skills", {"instrument": "soft-skills-v1", "group_by": "week"}, "group_by", ["hours_band", "province"]),
    ("skills", {"instrument": "soft-skills-v1", "status": "all"}, "status", ["instrument", "group_by"]),
    ("beneficiaries", {"status": "rejected"}, "status", ["verified", "all"]),
    ("overview", {"colour": "red"}, "colour", ["from", "to", "status", "province"]),
    # forms: the message says what is expected
    ("hours", {"province": "Phnom Penh"}, "province", None),
    ("hours", {"district": "12"}, "district", None),
    ("hours", {"month": "2026-13"}, "month", None),
    ("hours", {"quarter": "2026-Q5"}, "quarter", None),
    ("hours", {"week": "2026-W00"}, "week", None),
    ("hours", {"day": "2026-02-30"}, "day", None),
    ("hours", {"year": "26"}, "year", None),
    ("hours", {"project": "not-a-uuid"}, "project", None),
    ("hours", {"organization": "42"}, "organization", None),
    ("hours", {"to": "tomorrow"}, "to", None),
    ("hours", {"from": "2026/03/01"}, "from", None),
    ("volunteers", {"from": "2026-04-01", "to": "2026-03-31"}, "from", None),
    ("hours", {"program": "x" * 101}, "program", None),
])
async def test_bad_questions_are_422_saying_what_is_allowed(admin: httpx.AsyncClient, path, params, loc, allowed):
    problem = assert_problem(await admin.get(f"/analytics/{path}", params=params), 422, ["query", loc])
    [error] = [e for e in problem["errors"] if e["loc"] == ["query", loc]]
    if allowed:
        assert set(allowed) <= set(error["allowed"]), problem
        assert all(value in problem["detail"] for value in allowed), problem
    else:
        assert error["msg"] and error["msg"] in problem["detail"], problem


@pytest.mark.parametrize("params", [
    {"year": "0000"}, {"day": "0001-01-01"}, {"week": "9999-W52"}, {"from": "9999-12-31", "to": "9999-12-31"},
    {"month": "0000-01"}, {"quarter": "0000-Q1"}, {"activity_type": "a\x00b"}, {"district": "1\u0662\u0663\u0664"},
    {"group_by": ",,"}, {"group_by": "province,province"}, {"from": "today", "to": "today", "hxl": "true"},
    {"week": "2026-W53"}, {"day": "today", "group_by": "week,year,quarter,month,day"},
])
async def test_odd_questions_are_answered_or_refused_never_a_500(admin: httpx.AsyncClient, params):
    for path in ("hours", "volunteers"):
        answer = await admin.get(f"/analytics/{path}", params=params)
        assert answer.status_code in (200, 422), (path, params, answer.status_code, answer.text)
        if answer.status_code == 422:
            assert answer.headers["content-type"] == "application/problem+json", answer.text


@pytest.mark.parametrize(("params", "loc", "allowed"), [
    # A filter the export does not take would be silently ignored: the caller would send national figures
    # believing them a province's.
    ([("period", "202603"), ("province", "12")], "province", ["period"]),
    ([("period", "202603"), ("hxl", "true")], "hxl", ["period"]),
    ([("period", "202603"), ("period", "2026")], "period", None),
])
async def test_the_export_refuses_what_it_would_ignore(admin: httpx.AsyncClient, params, loc, allowed):
    problem = assert_problem(await admin.get("/analytics/export/dhis2", params=params), 422, ["query", loc])
    [error] = [e for e in problem["errors"] if e["loc"] == ["query", loc]]
    assert error.get("allowed") == allowed and error["msg"] in problem["detail"], problem
