"""POST /activities/batch through the gateway: the §4 summary by index, good items taken and bad ones
reported, a re-sent batch creating nothing twice, dry runs, limits, isolation per item."""
from __future__ import annotations

import httpx

from shared.events import ACTIVITIES_TOPIC
from tests.api import assert_problem, walk
from tests.eventlog import find_events
from tests.factories import create_org, org_key
from tests.integration.activity_factories import LOGGER, activity_body, setting


async def batch(client: httpx.AsyncClient, items: list, **params) -> dict:
    answer = await client.post("/activities/batch", json={"items": items}, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_a_mixed_batch_takes_the_good_items_and_reports_the_bad_by_index(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    good = [activity_body(s, date=f"2026-05-{day:02d}") for day in range(1, 6)]
    items = [
        good[0],
        activity_body(s, hours=30),                          # 1: over 24
        "not an object",                                     # 2
        {**good[1], "status": "verified"},                   # 3: a field the client does not own
        good[1],
        activity_body(s, location_code="9999"),              # 5: unknown place
        activity_body(s, date="2026-05-01", hours=22),       # 6: with item 0 the day would pass 24
        {**good[2]},                                         # 7: taken
        {**good[2], "hours": 1},                             # 8: same client_reference as item 7
    ]
    summary = await batch(admin, items)
    by_index = {item["index"]: item for item in summary["items"]}
    assert [by_index[i]["status"] for i in range(len(items))] == [
        "created", "error", "error", "error", "created", "error", "error", "created", "duplicate"]
    assert (summary["created"], summary["errors"], summary["ignored"], summary["updated"]) == (3, 5, 1, 0)
    assert by_index[1]["errors"][0]["loc"] == ["hours"]
    assert by_index[3]["errors"][0]["loc"] == ["status"]
    assert by_index[5]["errors"][0]["loc"] == ["location_code"]
    assert by_index[6]["errors"][0]["loc"] == ["hours"] and "24" in by_index[6]["errors"][0]["msg"]
    assert by_index[8]["id"] == by_index[7]["id"]
    stored = {a["id"]: a for a in await walk(admin, "/activities", volunteer_id=s.volunteer["id"])}
    assert set(stored) == {by_index[i]["id"] for i in (0, 4, 7)}
    assert stored[by_index[7]["id"]]["hours"] == good[2]["hours"]
    created = {by_index[i]["id"] for i in (0, 4, 7)}
    events = await find_events(stack.broker.bootstrap, ACTIVITIES_TOPIC, lambda e: e.get("subject") in created, count=3)
    assert {e["type"] for e in events} == {"vmc.activity.submitted"} and {e["subject"] for e in events} == created

    # The same batch again creates nothing: every item once taken is a duplicate naming its entry.
    again = await batch(admin, items)
    assert again["created"] == 0 and again["ignored"] == 4
    assert {i["index"]: i.get("id") for i in again["items"] if i["status"] == "duplicate"} == {
        0: by_index[0]["id"], 4: by_index[4]["id"], 7: by_index[7]["id"], 8: by_index[7]["id"]}
    assert len(await walk(admin, "/activities", volunteer_id=s.volunteer["id"])) == 3


async def test_a_dry_run_validates_everything_and_changes_nothing(admin: httpx.AsyncClient):
    s = await setting(admin)
    items = [activity_body(s, date="2026-07-01"), activity_body(s, date="2099-07-01")]
    summary = await batch(admin, items, dry_run="true")
    assert summary["dry_run"] is True and (summary["created"], summary["errors"]) == (1, 1)
    assert summary["items"][1]["errors"][0]["loc"] == ["date"]
    assert await walk(admin, "/activities", volunteer_id=s.volunteer["id"]) == []
    assert (await batch(admin, items))["created"] == 1


async def test_a_batch_that_is_wrong_as_a_whole_is_a_4xx(admin: httpx.AsyncClient):
    s = await setting(admin)
    assert_problem(await admin.post("/activities/batch", json={"items": [activity_body(s)] * 1001}), 422, ["body", "items"])
    assert_problem(await admin.post("/activities/batch", json=[activity_body(s)]), 422)
    assert_problem(await admin.post("/activities/batch", json={"items": [], "extra": 1}), 422, ["body", "extra"])
    assert (await batch(admin, []))["items"] == []


async def test_another_organisations_records_are_item_errors_not_leaks(admin: httpx.AsyncClient, stack):
    s = await setting(admin)
    other = await create_org(admin)
    async with org_key(stack, admin, other["id"], LOGGER) as as_other:
        summary = await batch(as_other, [activity_body(s)])
    [item] = summary["items"]
    assert item["status"] == "error" and {e["msg"] for e in item["errors"]} == {"volunteer not found", "project not found"}
    assert await walk(admin, "/activities", volunteer_id=s.volunteer["id"]) == []


async def test_a_full_batch_of_1000_is_taken(admin: httpx.AsyncClient):
    s = await setting(admin)
    items = [activity_body(s, date=f"2026-{2 + i // 28:02d}-{1 + i % 28:02d}", hours=0.5) for i in range(250)] * 4
    # 250 days x 4 entries of 0.5 h, each with its own reference: 1000 entries, 2 hours a day.
    items = [{**item, "client_reference": f"{item['client_reference']}-{n}"} for n, item in enumerate(items)]
    items[0] = {**items[0], "hours": 2.35, "evidence_urls": ["https://example.org/a", "http://example.org/b?x=1"]}
    summary = await batch(admin, items)
    assert summary["created"] == 1000 and summary["errors"] == 0, summary["items"][:3]
    stored = {a["id"]: a for a in await walk(admin, "/activities", volunteer_id=s.volunteer["id"])}
    assert len(stored) == 1000
    first = stored[summary["items"][0]["id"]]  # written in bulk (COPY on PostgreSQL): every field as sent
    assert (first["hours"], first["evidence_urls"], first["beneficiaries"]) == (
        2.35, items[0]["evidence_urls"], items[0]["beneficiaries"])
    assert first["client_reference"] == items[0]["client_reference"] and first["focus_area"] == "environment"


async def test_an_idempotency_key_replays_a_batch_without_references(admin: httpx.AsyncClient):
    s = await setting(admin)
    items = [activity_body(s, client_reference=None, date="2026-08-03", hours=1)]
    key = {"Idempotency-Key": f"batch-{s.volunteer['id']}"}
    first = await admin.post("/activities/batch", json={"items": items}, headers=key)
    again = await admin.post("/activities/batch", json={"items": items}, headers=key)
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert first.json()["created"] == 1
    assert_problem(await admin.post("/activities/batch", json={"items": items * 2}, headers=key), 409)
    assert len(await walk(admin, "/activities", volunteer_id=s.volunteer["id"])) == 1
