"""Shared helpers of the console's browser tests (issue 19): a real headless Chromium (Debian's package,
never a downloaded build) driven by Playwright against the `stack` fixture's gateway.

- `browser`: a fresh page (own context: empty sessionStorage and localStorage) at desktop size;
  `phone_browser` the same at 390×844. Console messages of level error and page errors (a CSP violation
  is one) are collected: `errors_of(page)`.
- `sign_in(page, key)`: opens /console/, types the key, waits for the tabs.
- `screenshot(page, name)`: a PNG under var/screenshots/ (gitignored) for a reviewer; prints its path.

A test module imports the fixtures it uses by name (`from tests.integration.console_browser import
browser, chromium`) so pytest finds them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from weakref import WeakKeyDictionary

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# CI runs as root and installs Chromium (`make browser`): there a missing browser fails loudly. Only a
# developer's machine without root and without the package skips.
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.geteuid() != 0,
    reason="Debian's chromium is not installed (`make browser` as root installs it)",
)
# Chromium flags: no sandbox (root in CI), no network but the gateway on the loopback: the console must
# work with no internet, so any request elsewhere fails.
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]

# Chromium logs every 4xx answer to fetch() as a console error; from the API these are answers the
# console reads (a 403 while probing scopes, a 422 shown to the person), not faults of the page.
API_REFUSAL = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")

REPORT_CSP_VIOLATIONS = """document.addEventListener('securitypolicyviolation', (event) =>
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || 'inline code'}`));"""

_errors: WeakKeyDictionary[Page, list[str]] = WeakKeyDictionary()


@pytest.fixture(scope="session")
async def chromium() -> Browser:
    """One Chromium for the session (a launch costs about a second)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        await browser.close()


async def _page(chromium: Browser, stack, viewport: dict) -> Page:
    context = await chromium.new_context(base_url=stack.urls["gateway"], viewport=viewport, accept_downloads=True,
                                         locale="en-GB")
    # Every CSP violation also reported as a console error naming the directive (Playwright's init
    # scripts run whatever the page's CSP says).
    await context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = await context.new_page()
    errors: list[str] = []

    def noted(message: ConsoleMessage) -> None:
        url = message.location.get("url") or ""
        if message.type == "error" and not (API_REFUSAL.match(message.text) and "/api/v1/" in url):
            errors.append(f"console error: {message.text} at {url}")

    page.on("console", noted)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    _errors[page] = errors
    return page


@pytest.fixture
async def browser(chromium, stack) -> Page:
    """A page of a fresh browser context at desktop size."""
    page = await _page(chromium, stack, DESKTOP)
    yield page
    await page.context.close()


@pytest.fixture
async def phone_browser(chromium, stack) -> Page:
    """A page of a fresh browser context at a phone's size (390×844)."""
    page = await _page(chromium, stack, PHONE)
    yield page
    await page.context.close()


def errors_of(page: Page) -> list[str]:
    """Console errors and uncaught exceptions of the page so far (CSP violations are console errors),
    but not the API's 4xx answers, which the console handles."""
    return _errors[page]


async def sign_in(page: Page, key: str) -> None:
    """Open the console and sign in with `key`; returns once the tabs are shown."""
    await page.goto("/console/")
    await page.get_by_test_id("signin-key").fill(key)
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("tab-dashboard")).to_be_visible(timeout=20_000)


async def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG as var/screenshots/<name>.png and print where."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path
