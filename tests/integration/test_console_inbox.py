"""The console's verification inbox (issue 19, point 3) in a real headless Chromium: an organisation's
coordinator sees its submitted activities (and never another organisation's), filters and sorts them,
verifies, approves part of, rejects with a reason, decides several at once with each item's result shown,
and the decided hours reach the figures; evidence links are links only when http(s)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
from playwright.async_api import Page, Route, expect

from tests.conftest import eventually
from tests.factories import create_enrollment, create_org, create_project, register
from tests.harness import unique
from tests.integration.activity_factories import Setting, activity_body
from tests.integration.console_browser import (  # noqa: F401 - browser, chromium, phone_browser: fixtures
    browser, chromium, errors_of, needs_chromium, phone_browser, screenshot, sign_in,
)

pytestmark = needs_chromium

COORDINATOR = ["activities:read", "activities:verify", "analytics:read"]
HOSTILE_TEXT = '<img src=x onerror="document.title=1">'


@dataclass
class Inbox:
    """An organisation running two projects, its coordinator's key, the activities waiting in its inbox
    (by name), another organisation's waiting activity, and one of the organisation's volunteers in the
    other organisation's project (its key reads it, may not decide it): neither shows."""

    org: dict
    project: dict
    other_project: dict
    key: str
    activities: dict[str, dict] = field(default_factory=dict)
    stranger: dict | None = None
    readable: dict | None = None


async def _key(admin: httpx.AsyncClient, organization_id: str, scopes: list[str]) -> str:
    answer = await admin.post("/admin/api-keys", json={"name": unique("console"), "organization_id": organization_id,
                                                      "scopes": scopes})
    assert answer.status_code == 201, answer.text
    return answer.json()["key"]


async def _logged(admin: httpx.AsyncClient, s: Setting, **overrides) -> dict:
    answer = await admin.post("/activities", json=activity_body(s, **overrides))
    assert answer.status_code == 201, answer.text
    return answer.json()


async def _inbox(admin: httpx.AsyncClient, scopes: list[str] = COORDINATOR) -> Inbox:
    org = await create_org(admin)
    project = await create_project(admin, org["id"])
    other_project = await create_project(admin, org["id"], program_id=project["program_id"])
    first, second = [await register(admin, organization_id=org["id"]) for _ in range(2)]
    for volunteer in (first, second):
        await create_enrollment(admin, volunteer["id"], project["id"])
    await create_enrollment(admin, second["id"], other_project["id"])
    world = Inbox(org, project, other_project, await _key(admin, org["id"], scopes))
    here, there = Setting(org, project, first), Setting(org, project, second)
    plan = {  # name: (who, date, hours, type)
        "verify": (here, "2026-03-02", 3, "tree_planting"),
        "partial": (here, "2026-03-03", 2.5, "tree_planting"),
        "reject": (here, "2026-03-04", 4, "clean_up"),
        "bulk1": (there, "2026-04-01", 1, "community_meeting"),
        "bulk2": (there, "2026-04-02", 2, "community_meeting"),
        "bulk-late": (there, "2026-04-03", 1.25, "community_meeting"),
        "hostile": (here, "2026-05-05", 6, "health_promotion"),
    }
    for name, (s, day, hours, kind) in plan.items():
        world.activities[name] = await _logged(admin, s, date=day, hours=hours, activity_type=kind)
    world.activities["hostile"] = await _patched_description(admin, world.activities["hostile"])
    world.activities["elsewhere"] = await _logged(admin, Setting(org, other_project, second), date="2026-06-10", hours=5,
                                                  activity_type="education_support")
    stranger_org = await create_org(admin)
    stranger = Setting(stranger_org, await create_project(admin, stranger_org["id"]), await register(admin, organization_id=stranger_org["id"]))
    await create_enrollment(admin, stranger.volunteer["id"], stranger.project["id"])
    world.stranger = await _logged(admin, stranger, date="2026-03-02")
    # The organisation's own volunteer in the other organisation's project: readable, not its to decide.
    await create_enrollment(admin, second["id"], stranger.project["id"])
    world.readable = await _logged(admin, Setting(stranger_org, stranger.project, second), date="2026-03-09")
    return world


async def _patched_description(admin: httpx.AsyncClient, activity: dict) -> dict:
    """A description that would run script if the console rendered it as HTML."""
    answer = await admin.patch(f"/activities/{activity['id']}", json={"description": HOSTILE_TEXT})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _verified_hours(admin: httpx.AsyncClient, project_id: str, status: str = "verified") -> float | None:
    """The project's hours in analytics (the national admin key sees them unsuppressed); None until known."""
    answer = await admin.get("/analytics/overview", params={"project": project_id, "status": status})
    if answer.status_code != 200 or not answer.json()["rows"]:
        return None
    return answer.json()["rows"][0]["hours"]


def _row(page: Page, activity: dict):
    return page.locator(f'[data-testid="inbox-row"][data-activity-id="{activity["id"]}"]')


async def _open_inbox(page: Page, key: str) -> None:
    await sign_in(page, key)
    await page.get_by_test_id("tab-inbox").click()
    await expect(page.get_by_test_id("inbox-status")).not_to_have_text("Loading…")


async def _status_of(admin: httpx.AsyncClient, activity: dict) -> tuple[str, float | None]:
    answer = (await admin.get(f"/activities/{activity['id']}")).json()
    return answer["status"], answer["approved_hours"]


async def test_the_coordinator_decides_one_by_one_and_in_bulk_and_the_figures_follow(admin: httpx.AsyncClient, browser: Page):
    # Unsuppressed: the dashboard's headline figure of two volunteers is a number, not "fewer than 5".
    world = await _inbox(admin, [*COORDINATOR, "analytics:unsuppressed"])
    a = world.activities
    # Analytics knows every submitted hour before the first decision, so the verified figure that
    # follows is the inbox's doing.
    submitted = sum(activity["hours"] for name, activity in a.items() if name != "elsewhere")
    await eventually(lambda: _all_hours_are(admin, world.project["id"], submitted), timeout=30,
                     what="the submitted activities in analytics")
    assert await _verified_hours(admin, world.project["id"]) in (0, None)

    await _open_inbox(browser, world.key)
    await expect(browser.get_by_test_id("inbox-row")).to_have_count(len(a))
    # Another organisation's never shows, nor what the key may read but the other organisation decides.
    await expect(_row(browser, world.stranger)).to_have_count(0)
    await expect(_row(browser, world.readable)).to_have_count(0)
    await expect(browser.get_by_test_id("inbox-elsewhere")).to_contain_text("Not shown: 1,")
    async with httpx.AsyncClient(base_url=str(admin.base_url), headers={"Authorization": f"Bearer {world.key}"}) as coordinator:
        assert (await coordinator.get(f"/activities/{world.readable['id']}")).status_code == 200
        assert (await coordinator.get(f"/activities/{world.stranger['id']}")).status_code == 404
    await screenshot(browser, "console-inbox")

    # One by one: all the hours, part of them, and a rejection that insists on its reason.
    await _row(browser, a["verify"]).get_by_test_id("inbox-verify").click()
    await expect(_row(browser, a["verify"])).to_have_count(0)
    partial = _row(browser, a["partial"])
    await partial.get_by_test_id("inbox-approved-hours").fill("3")  # more than claimed: refused here
    await partial.get_by_test_id("inbox-verify").click()
    await expect(partial.get_by_test_id("inbox-row-error")).to_contain_text("at most")
    await partial.get_by_test_id("inbox-approved-hours").fill("1,5")  # a decimal comma, as many type it
    await partial.get_by_test_id("inbox-verify").click()
    await expect(partial).to_have_count(0)
    rejected = _row(browser, a["reject"])
    await rejected.get_by_test_id("inbox-reject").click()
    await expect(rejected.get_by_test_id("inbox-row-error")).to_have_text("A reason is required to reject.")
    await rejected.get_by_test_id("inbox-reason").fill("the photo shows another site")
    await rejected.get_by_test_id("inbox-reject").click()
    await expect(rejected).to_have_count(0)

    # In bulk: one of the three was rejected meanwhile by someone else, so its item fails and stays.
    assert (await admin.post(f"/activities/{a['bulk-late']['id']}/reject", json={"reason": "duplicate"})).status_code == 200
    for name in ("bulk1", "bulk2", "bulk-late"):
        await _row(browser, a[name]).get_by_test_id("inbox-select").check()
    await expect(browser.get_by_test_id("inbox-selected-count")).to_have_text("3 selected")
    await browser.get_by_test_id("inbox-bulk-verify").click()
    await expect(browser.get_by_test_id("inbox-status")).to_have_text("Decided: 2; already decided: 0; errors: 1")
    started = time.monotonic()
    for name in ("bulk1", "bulk2"):
        await expect(_row(browser, a[name])).to_have_count(0)
    late = _row(browser, a["bulk-late"])
    await expect(late.get_by_test_id("inbox-row-error")).to_contain_text("rejected")
    results = browser.get_by_test_id("inbox-result")
    await expect(results).to_have_count(6)
    await expect(browser.locator('[data-testid="inbox-result"][data-status="ok"]')).to_have_count(5)
    await expect(browser.locator(f'[data-testid="inbox-result"][data-status="error"][data-activity-id="{a["bulk-late"]["id"]}"]')
                 ).to_contain_text("rejected")
    await expect(browser.locator(f'[data-testid="inbox-result"][data-activity-id="{a["partial"]["id"]}"]')
                 ).to_contain_text("1.5 of 2.5 h approved")
    await expect(browser.get_by_test_id("inbox-row")).to_have_count(3)  # bulk-late, hostile, elsewhere
    await screenshot(browser, "console-inbox-decided")

    assert [await _status_of(admin, a[name]) for name in ("verify", "partial", "reject", "bulk1", "bulk2", "bulk-late")] == [
        ("verified", 3), ("verified", 1.5), ("rejected", None), ("verified", 1), ("verified", 2), ("rejected", None)]
    await eventually(lambda: _verified_hours_are(admin, world.project["id"], 3 + 1.5 + 1 + 2), timeout=20,
                     what="the decided hours in analytics")
    print(f"verified hours in analytics {time.monotonic() - started:.1f} s after the bulk decision was shown")
    # A reload shows what is still waiting, nothing decided.
    await browser.get_by_test_id("inbox-refresh").click()
    await expect(browser.get_by_test_id("inbox-row")).to_have_count(2)
    # Rejected in bulk: a reason is needed for each, the row's own or the one given for all.
    await browser.get_by_test_id("inbox-select-all").check()
    await browser.get_by_test_id("inbox-bulk-reject").click()
    await expect(browser.get_by_test_id("inbox-status")).to_contain_text("Give a reason to reject")
    await _row(browser, a["hostile"]).get_by_test_id("inbox-reason").fill("no photo of the session")
    await browser.get_by_test_id("inbox-bulk-reason").fill("logged twice")
    await browser.get_by_test_id("inbox-bulk-reject").click()
    await expect(browser.get_by_test_id("inbox-status")).to_have_text("Decided: 2; already decided: 0; errors: 0")
    await expect(browser.get_by_test_id("inbox-row")).to_have_count(0)
    assert [await _status_of(admin, a[name]) for name in ("hostile", "elsewhere")] == [("rejected", None)] * 2
    # The organisation's dashboard counts the hours just verified.
    await browser.get_by_test_id("tab-dashboard").click()
    await expect(browser.get_by_test_id("figure-verified-hours")).to_have_text("7.5", timeout=20_000)
    assert errors_of(browser) == []


async def _all_hours_are(admin: httpx.AsyncClient, project_id: str, hours: float) -> bool:
    return await _verified_hours(admin, project_id, status="all") == hours


async def _verified_hours_are(admin: httpx.AsyncClient, project_id: str, hours: float) -> bool:
    return await _verified_hours(admin, project_id) == hours


async def test_filters_sorting_and_values_shown_as_text(admin: httpx.AsyncClient, browser: Page):
    world = await _inbox(admin)
    a = world.activities
    await _open_inbox(browser, world.key)
    rows = browser.get_by_test_id("inbox-row")
    await expect(rows).to_have_count(len(a))

    await browser.get_by_test_id("inbox-sort").select_option("hours-asc")
    await expect(rows.first).to_have_attribute("data-activity-id", a["bulk1"]["id"])
    await browser.get_by_test_id("inbox-sort").select_option("date-desc")
    await expect(rows.first).to_have_attribute("data-activity-id", a["elsewhere"]["id"])

    # The project filter is the API's: the other project's one entry.
    await browser.get_by_test_id("inbox-filter-project").select_option(world.other_project["id"])
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-activity-id", a["elsewhere"]["id"])
    await browser.get_by_test_id("inbox-filter-project").select_option("")
    # The date range is the API's too: March only.
    await browser.get_by_test_id("inbox-filter-from").fill("2026-03-01")
    await browser.get_by_test_id("inbox-filter-to").fill("2026-03-31")
    await expect(rows).to_have_count(3)
    await browser.get_by_test_id("inbox-filter-from").fill("")
    await browser.get_by_test_id("inbox-filter-to").fill("")
    await expect(rows).to_have_count(len(a))
    # The type filter (the API has none) narrows what is loaded, by the type's name.
    await browser.get_by_test_id("inbox-filter-type").select_option(label="Community meeting")
    await expect(rows).to_have_count(3)
    await browser.get_by_test_id("inbox-filter-type").select_option("")

    # API values are text: the hostile description is shown as its characters, runs nothing.
    hostile = _row(browser, a["hostile"])
    await expect(hostile.get_by_test_id("inbox-description")).to_have_text(HOSTILE_TEXT)
    assert await hostile.locator("img").count() == 0
    link = hostile.get_by_test_id("inbox-evidence-link")
    await expect(link).to_have_attribute("href", a["hostile"]["evidence_urls"][0])
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await expect(link).to_have_attribute("target", "_blank")
    assert errors_of(browser) == [] and await browser.title() != "1"


async def test_the_inbox_pages_through_the_api(admin: httpx.AsyncClient, browser: Page):
    """Pages of three (the console asks for 200: the test shrinks the API's page) follow the cursor."""
    world = await _inbox(admin)

    async def small_pages(route: Route) -> None:
        await route.continue_(url=route.request.url.replace("limit=200", "limit=3"))

    await browser.route("**/api/v1/activities?*", small_pages)
    await _open_inbox(browser, world.key)
    rows, more = browser.get_by_test_id("inbox-row"), browser.get_by_test_id("inbox-more")
    await expect(rows).to_have_count(3)
    await expect(browser.get_by_test_id("inbox-status")).to_contain_text("more are waiting")
    # 9 visible entries: 8 to decide and the one another organisation decides, left out on its page.
    for shown in (6, len(world.activities)):
        await more.click()
        await expect(rows).to_have_count(shown)
    await expect(more).to_be_hidden()
    await expect(browser.get_by_test_id("inbox-elsewhere")).to_contain_text("Not shown: 1,")


async def test_an_evidence_url_that_is_not_http_is_never_a_link(admin: httpx.AsyncClient, browser: Page):
    """The API refuses such URLs (a 422); were one to reach the console anyway, it stays inert text."""
    world = await _inbox(admin)
    target = world.activities["verify"]
    refused = await admin.patch(f"/activities/{target['id']}", json={"evidence_urls": ["javascript:alert(1)"]})
    assert refused.status_code == 422
    smuggled = ["javascript:alert(1)", "JaVaScRiPt:document.title=1", "data:text/html,<b>x</b>", "https://example.org/ok"]

    async def tamper(route: Route) -> None:
        answer = await route.fetch()
        page = await answer.json()
        for item in page["items"]:
            if item["id"] == target["id"]:
                item["evidence_urls"] = smuggled
        await route.fulfill(response=answer, body=json.dumps(page))

    await browser.route("**/api/v1/activities?*", tamper)
    await _open_inbox(browser, world.key)
    row = _row(browser, target)
    await expect(row.get_by_test_id("inbox-evidence-inert")).to_have_count(3)
    await expect(row.locator("a")).to_have_count(1)
    await expect(row.get_by_test_id("inbox-evidence-link")).to_have_attribute("href", "https://example.org/ok")
    assert await browser.locator('a[href^="javascript" i], a[href^="data" i]').count() == 0


async def test_a_key_without_the_verify_scope_is_told_why(admin: httpx.AsyncClient, browser: Page):
    org = await create_org(admin)
    await sign_in(browser, await _key(admin, org["id"], ["activities:read", "analytics:read"]))
    await browser.get_by_test_id("tab-inbox").click()
    missing = browser.locator('[data-testid="missing-scope"], [data-testid="inbox-missing-scope"]')
    await expect(missing).to_contain_text("activities:verify")
    await expect(browser.get_by_test_id("inbox-row")).to_have_count(0)


async def test_the_inbox_in_khmer_on_a_phone(admin: httpx.AsyncClient, phone_browser: Page):
    world = await _inbox(admin)
    page = phone_browser
    await _open_inbox(page, world.key)
    await page.get_by_test_id("lang-switch").click()
    await page.get_by_test_id("tab-inbox").click()
    rows = page.get_by_test_id("inbox-row")
    await expect(rows).to_have_count(len(world.activities))
    await expect(rows.first.get_by_test_id("inbox-verify")).to_have_text("ផ្ទៀងផ្ទាត់")
    await expect(_row(page, world.activities["verify"]).get_by_test_id("inbox-type")).to_have_text("ការដាំដើមឈើ")
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await screenshot(page, "console-inbox-phone-km")
    # Part of the hours, typed in Khmer digits.
    row = _row(page, world.activities["verify"])
    await row.get_by_test_id("inbox-approved-hours").fill("២")
    await row.get_by_test_id("inbox-verify").click()
    await expect(row).to_have_count(0)
    await expect(page.get_by_test_id("inbox-result")).to_contain_text("បានផ្ទៀងផ្ទាត់ អនុម័ត")
    assert await _status_of(admin, world.activities["verify"]) == ("verified", 2)
    assert errors_of(page) == []
