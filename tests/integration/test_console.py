"""The web console (issue 19) in a real headless Chromium: served without a key under a strict CSP,
signed in with an API key, in English and Khmer, on a desktop and a phone-sized screen."""
from __future__ import annotations

import httpx
from playwright.async_api import expect

from gateway.console import CONTENT_SECURITY_POLICY
from tests.integration.console_browser import (  # noqa: F401 - browser, chromium, phone_browser: fixtures
    browser, chromium, errors_of, needs_chromium, phone_browser, screenshot, sign_in,
)

pytestmark = needs_chromium


async def test_the_page_loads_without_a_key_under_its_csp(stack, browser):
    answer = await browser.goto("/console/")
    assert answer.status == 200
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    await expect(browser.get_by_test_id("signin-key")).to_be_visible()
    await screenshot(browser, "console-signin")
    assert errors_of(browser) == []


async def test_signing_in_shows_the_tabs(stack, browser):
    await sign_in(browser, stack.admin_key)
    await expect(browser.get_by_test_id("tab-inbox")).to_be_visible()
    assert errors_of(browser) == []
