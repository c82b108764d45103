"""The web console (issue 19) in a real headless Chromium: served without a key under a strict CSP,
signed in with an API key kept in the tab only, the dashboard reading figures this test wrote through
the API and following them live, suppressed cells shown as "fewer than 5", CSV downloads equal to the
API's CSV, API values shown as text, Khmer with its shipped font, a missing scope named, a phone-sized
screen. Screenshots of each page go to var/screenshots/."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from gateway.console import CONTENT_SECURITY_POLICY
from tests.conftest import eventually
from tests.factories import create_enrollment, create_org, create_project, register
from tests.harness import unique
from tests.integration.activity_factories import Setting, activity_body, log
from tests.integration.console_browser import (  # noqa: F401 - browser, chromium, phone_browser: fixtures
    PHONE, browser, chromium, errors_of, needs_chromium, phone_browser, screenshot, sign_in,
)

pytestmark = needs_chromium

# A value that would run script if the console ever rendered API text as HTML.
HOSTILE = '<img src=x onerror="window.__vmcHacked=1">'
VOLUNTEERS = 6   # 5 women and 1 man, all 26: the man's cell of sex × age is suppressed (k = 5)
HOURS = 2        # each volunteer's verified entry; one more entry of LATE_HOURS stays submitted
LATE_HOURS = 3
SOFT = {"communication": 3, "teamwork": 3, "leadership": 2, "problem_solving": 3, "critical_thinking": 2,
        "self_confidence": 2}
KEY_STORAGE = "vmc.console.key"


@dataclass
class World:
    """A fresh project (named HOSTILE) of a fresh organisation with six volunteers' verified hours."""

    org: dict
    project: dict
    pending_id: str   # a submitted entry that test_figures_follow_a_verification_live verifies
    key: str          # national: analytics:read, registry:read, activities:read


async def _ok(answer: httpx.Response) -> dict:
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


async def _volunteer_with_hours(admin: httpx.AsyncClient, org: dict, project: dict, sex: str) -> tuple[dict, dict]:
    """A volunteer of the project with one entry of HOURS and a baseline and an endline."""
    volunteer = await register(admin, organization_id=org["id"], sex=sex, date_of_birth="2000-01-01",
                               residence_province="12")
    await create_enrollment(admin, volunteer["id"], project["id"])
    entry = await _ok(await log(admin, activity_body(Setting(org, project, volunteer), hours=HOURS, date="2026-03-10")))
    for phase, taken_on, communication in (("baseline", "2026-03-01", 2), ("endline", "2026-06-01", 4)):
        await _ok(await admin.post("/assessments", json={
            "volunteer_id": volunteer["id"], "instrument": "soft-skills-v1", "phase": phase, "taken_on": taken_on,
            "scores": {**SOFT, "communication": communication}}))
    return volunteer, entry


@pytest.fixture(scope="module")
async def world(stack) -> World:
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {stack.admin_key}"},
                                 timeout=30) as admin:
        org = await create_org(admin)
        project = await create_project(admin, org["id"], name=HOSTILE)
        made = [await _volunteer_with_hours(admin, org, project, "male" if index == 0 else "female")
                for index in range(VOLUNTEERS)]
        for _, entry in made:
            await _ok(await admin.post(f"/activities/{entry['id']}/verify", json={}))
        late = activity_body(Setting(org, project, made[0][0]), hours=LATE_HOURS, date="2026-04-02")
        pending = await _ok(await log(admin, late))
        created = await _ok(await admin.post("/admin/api-keys", json={
            "name": unique("console"), "organization_id": org["id"], "national": True,
            "scopes": ["analytics:read", "registry:read", "activities:read"]}))

        async def arrived() -> bool:
            answer = await admin.get("/analytics/overview", params={"project": project["id"], "status": "all"})
            return answer.status_code == 200 and answer.json()["rows"][0]["activities"] == VOLUNTEERS + 1

        await eventually(arrived, timeout=30, what="the project's entries in analytics")
        return World(org, project, pending["id"], created["key"])


async def open_dashboard(page: Page, world: World) -> None:
    """Sign in with the world's key and filter the dashboard to its project."""
    await sign_in(page, world.key)
    await page.get_by_test_id("filter-project").select_option(world.project["id"])
    await expect(page.get_by_test_id("figure-volunteers")).to_have_text(str(VOLUNTEERS), timeout=20_000)


async def test_the_page_loads_without_a_key_under_its_csp(stack, browser, anonymous):
    answer = await browser.goto("/console/")
    assert answer.status == 200
    headers = answer.headers
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert (headers["x-content-type-options"], headers["referrer-policy"]) == ("nosniff", "no-referrer")
    assert headers["cache-control"] == "no-cache"
    await expect(browser.get_by_test_id("signin-key")).to_be_visible()
    await screenshot(browser, "console-signin")
    assert errors_of(browser) == []
    # Without a key: the bare path redirects, every file carries the same headers; the console adds
    # no route to the API document.
    bare = await anonymous.get("/console", follow_redirects=False)
    assert (bare.status_code, bare.headers["location"]) == (308, "/console/")
    script = await anonymous.get("/console/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    missing = await anonymous.get("/console/nothing.js")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    outside = await anonymous.get("/console/..%2fconsole.py")   # nothing outside gateway/console/
    assert outside.status_code == 404
    paths = (await anonymous.get("/api/v1/openapi.json")).json()["paths"]
    assert [path for path in paths if "console" in path] == []


async def test_the_key_stays_in_the_tab_and_is_forgotten_on_sign_out(stack, browser, world):
    await browser.goto("/console/")
    await browser.get_by_test_id("signin-key").fill("vmc_nope_notakey")
    await browser.get_by_test_id("signin-submit").click()
    await expect(browser.get_by_test_id("signin-message")).to_have_text("This key was not accepted. Check it and try again.")
    await sign_in(browser, world.key)
    assert await browser.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == world.key
    assert await browser.evaluate("document.cookie") == ""
    stored = await browser.evaluate("JSON.stringify(Object.assign({}, localStorage))")
    assert world.key not in stored and world.key not in browser.url
    await browser.reload()   # the same tab keeps the key
    await expect(browser.get_by_test_id("tab-dashboard")).to_be_visible()
    await browser.get_by_test_id("sign-out").click()
    await expect(browser.get_by_test_id("signin-key")).to_be_visible()
    assert await browser.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
    assert errors_of(browser) == []


async def test_a_revoked_key_is_signed_out(stack, browser, admin, world):
    created = await _ok(await admin.post("/admin/api-keys", json={
        "name": unique("console"), "organization_id": world.org["id"], "scopes": ["analytics:read"]}))
    await sign_in(browser, created["key"])
    await expect(browser.get_by_test_id("figure-volunteers")).to_be_visible(timeout=20_000)
    assert (await admin.delete(f"/admin/api-keys/{created['id']}")).status_code in (200, 204)
    # The next poll is refused: the key is forgotten and the sign-in form says why.
    await expect(browser.get_by_test_id("signin-message")).to_contain_text("no longer accepted", timeout=30_000)
    assert await browser.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None


async def test_the_dashboard_reads_figures_written_through_the_api(stack, browser, world):
    await open_dashboard(browser, world)
    await expect(browser.get_by_test_id("figure-verified-hours")).to_have_text(str(VOLUNTEERS * HOURS))
    await expect(browser.get_by_test_id("figure-activities")).to_have_text(str(VOLUNTEERS))
    # Each entry reached 4 women and 3 men, 2 of them children (activity_body).
    await expect(browser.get_by_test_id("figure-beneficiaries")).to_have_text(str(7 * VOLUNTEERS))
    await expect(browser.get_by_test_id("figure-children")).to_have_text(str(2 * VOLUNTEERS))
    province = browser.get_by_test_id("chart-province-table")
    await expect(province.get_by_test_id("chart-row")).to_have_count(1)
    await expect(province.get_by_test_id("chart-row")).to_contain_text(["Phnom Penh"])
    skills = browser.get_by_test_id("chart-skills-table")
    await expect(skills.get_by_test_id("chart-row")).to_contain_text(["0-19 h"])
    await screenshot(browser, "console-dashboard")
    assert errors_of(browser) == []


async def test_suppressed_cells_read_fewer_than_5_never_zero(stack, browser, world):
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {world.key}"}) as client:
        answer = await _ok(await client.get("/analytics/volunteers", params={
            "project": world.project["id"], "group_by": "age_band,sex"}))
    male = next(row for row in answer["rows"] if row["sex"] == "male")
    assert male["suppressed"] is True and male["volunteers"] is None
    await open_dashboard(browser, world)
    table = browser.get_by_test_id("chart-sex_age-table")
    await table.locator("xpath=..").locator("summary").click()   # open the data table
    row = table.get_by_test_id("chart-row")
    await expect(row).to_contain_text(["25-30"])
    hidden = row.get_by_test_id("cell-suppressed")
    await expect(hidden.first).to_have_text("fewer than 5")
    assert "0" not in await row.locator("td").all_text_contents()
    await screenshot(browser, "console-suppressed")


async def test_a_csv_download_is_the_apis_csv(stack, browser, world, tmp_path: Path):
    await open_dashboard(browser, world)
    async with browser.expect_download() as waiting:
        await browser.get_by_test_id("chart-province-csv").click()
    download = await waiting.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {world.key}",
                                                              "Accept": "text/csv"}) as client:
        api = await client.get("/analytics/hours", params={
            "status": "verified", "project": world.project["id"], "group_by": "province"})
    assert api.status_code == 200 and api.headers["content-type"].startswith("text/csv")
    assert download.suggested_filename == "vmc-province.csv"
    assert saved.read_bytes() == api.content
    assert errors_of(browser) == []


async def test_api_values_are_rendered_as_text(stack, browser, world):
    await open_dashboard(browser, world)
    selected = browser.get_by_test_id("filter-project").locator("option:checked")
    await expect(selected).to_have_text(HOSTILE)
    assert await browser.locator("img").count() == 0
    assert await browser.evaluate("window.__vmcHacked") is None
    assert errors_of(browser) == []   # a script attribute refused by the CSP would be an error here


async def test_khmer_is_remembered_and_drawn_with_the_shipped_font(stack, browser, world):
    fonts: list[str] = []
    browser.on("response", lambda response: fonts.append(response.url) if response.url.endswith(".woff2") else None)
    await open_dashboard(browser, world)
    await browser.get_by_test_id("lang-switch").click()
    await expect(browser.get_by_test_id("tab-dashboard")).to_have_text("ផ្ទាំងតួលេខ")
    await expect(browser.locator("html")).to_have_attribute("lang", "km")
    await expect(browser.get_by_test_id("figure-volunteers")).to_have_text(str(VOLUNTEERS), timeout=20_000)
    await expect(browser.get_by_text("អ្នកស្ម័គ្រចិត្ត", exact=True).first).to_be_visible()
    # Months in Khmer (Intl's km-KH, or the console's own Khmer names where the browser lacks them).
    await expect(browser.get_by_test_id("chart-time-table").get_by_test_id("chart-row")).to_contain_text(["មីនា 2026"])
    await browser.wait_for_function(
        """() => document.fonts.check('16px "Noto Sans Khmer"', 'ខ្មែរ')
              && [...document.fonts].some((face) => face.family.includes('Noto Sans Khmer') && face.status === 'loaded')""")
    assert any("/console/fonts/noto-sans-khmer-khmer-" in url for url in fonts), fonts
    await screenshot(browser, "console-dashboard-km")
    await browser.reload()   # remembered
    await expect(browser.get_by_test_id("tab-dashboard")).to_have_text("ផ្ទាំងតួលេខ")
    assert errors_of(browser) == []


async def test_a_key_without_analytics_read_is_told_which_scope_is_missing(stack, browser, admin, world):
    created = await _ok(await admin.post("/admin/api-keys", json={
        "name": unique("console"), "organization_id": world.org["id"], "scopes": ["registry:read"]}))
    await sign_in(browser, created["key"])
    message = browser.get_by_test_id("missing-scope")
    await expect(message).to_contain_text("analytics:read")
    await expect(browser.get_by_test_id("figures")).to_have_count(0)
    await expect(browser.get_by_test_id("organization")).to_contain_text(world.org["name"])
    await screenshot(browser, "console-missing-scope")
    await browser.get_by_test_id("tab-dashboard").focus()
    await browser.keyboard.press("ArrowRight")   # tabs follow the arrow keys
    await expect(browser.get_by_test_id("tab-inbox")).to_be_focused()
    await expect(message).to_contain_text("activities:read, activities:verify")
    assert errors_of(browser) == []


async def test_a_key_without_the_registry_filters_by_the_figures_own_ids(stack, browser, admin, world):
    created = await _ok(await admin.post("/admin/api-keys", json={
        "name": unique("console"), "organization_id": world.org["id"], "scopes": ["analytics:read"]}))
    await sign_in(browser, created["key"])
    project = browser.get_by_test_id("filter-project").locator(f'option[value="{world.project["id"]}"]')
    await expect(project).to_have_text(world.project["id"])
    await expect(browser.get_by_test_id("tab-inbox")).to_be_visible()
    assert errors_of(browser) == []


async def test_the_dashboard_fits_a_phone(stack, phone_browser, world):
    await open_dashboard(phone_browser, world)
    await expect(phone_browser.get_by_test_id("chart-province-canvas")).to_be_visible()
    overflow = await phone_browser.evaluate("document.documentElement.scrollWidth")
    assert overflow <= PHONE["width"], overflow
    await screenshot(phone_browser, "console-dashboard-phone")
    assert errors_of(phone_browser) == []


async def test_figures_follow_a_verification_live(stack, browser, world, admin):
    await open_dashboard(browser, world)
    hours = browser.get_by_test_id("figure-verified-hours")
    await expect(hours).to_have_text(str(VOLUNTEERS * HOURS))
    url = browser.url
    await _ok(await admin.post(f"/activities/{world.pending_id}/verify", json={}))
    await expect(hours).to_have_text(str(VOLUNTEERS * HOURS + LATE_HOURS), timeout=30_000)
    assert browser.url == url   # polled, not reloaded


async def test_the_key_is_never_logged(stack, world, admin):
    secret = world.key.split("_", 2)[2]   # vmc_<prefix>_<secret>; the secret may hold "_" itself
    assert len(secret) >= 40
    logs = list(stack.workdir.glob("*.log"))
    assert any(path.name == "gateway.log" for path in logs), logs
    for path in logs:
        assert secret not in path.read_text(errors="replace"), path
    audit = await admin.get("/admin/audit-events", params={"limit": 500})
    assert audit.status_code == 200 and secret not in audit.text
