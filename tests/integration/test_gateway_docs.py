"""One API document for the whole system, rendered offline by /api/v1/docs in a real headless browser."""
from __future__ import annotations

import asyncio
import re
import shutil
import tempfile

import httpx
import pytest

from gateway.openapi import TITLE

# The same on any database: run in the PostgreSQL pass only (pyproject.toml, Makefile).
pytestmark = pytest.mark.dialect_free

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OPEN = {"/api/v1/openapi.json", "/api/v1/asyncapi.json", "/health", "/ready", "/metrics"}
METHODS = {"get", "post", "put", "patch", "delete"}


async def merged(stack) -> dict:
    async with httpx.AsyncClient(base_url=stack.urls["gateway"]) as client:
        answer = await client.get("/api/v1/openapi.json")  # no key needed
    assert answer.status_code == 200, answer.text
    return answer.json()


def refs(node) -> set[str]:
    if isinstance(node, dict):
        return {v for k, v in node.items() if k == "$ref"} | {r for v in node.values() for r in refs(v)}
    if isinstance(node, list):
        return {r for v in node for r in refs(v)}
    return set()


async def test_the_merged_document_covers_every_service_with_scopes_and_errors(stack):
    document = await merged(stack)
    assert document["info"]["title"] == TITLE and document["info"]["version"] == "1.0.0"
    assert "x-missing-services" not in document["info"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]
    paths = document["paths"]
    for path in ("/api/v1/organizations", "/api/v1/analytics/overview", "/api/v1/admin/api-keys", "/api/v1/admin/audit-events"):
        assert path in paths, path
    for path, operations in paths.items():
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            if path in OPEN:
                assert operation["security"] == [], path
                continue
            assert operation.get("x-required-scopes"), f"{method} {path} names no scope"
            assert "Required scope" in operation["description"]
            for status in ("401", "403", "404", "422", "429"):
                assert "application/problem+json" in operation["responses"][status]["content"], (method, path, status)
    schemas = document["components"]["schemas"]
    dangling = {r for r in refs(document) if r.rsplit("/", 1)[1] not in schemas}
    assert dangling == set()


async def test_the_asyncapi_document_is_served_beside_it(stack):
    async with httpx.AsyncClient(base_url=stack.urls["gateway"]) as client:
        answer = await client.get("/api/v1/asyncapi.json")
    assert answer.status_code == 200 and answer.json()["asyncapi"].startswith("3.")


async def test_docs_render_in_a_headless_browser_without_internet(stack):
    url = stack.urls["gateway"] + "/api/v1/docs"
    page = httpx.get(url).text
    # Every script and style sheet comes from the gateway itself.
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/api/v1/docs/assets/") for a in assets), assets
    assert shutil.which(CHROMIUM), "chromium is missing: `make install` installs it (apt-get install chromium)"
    with tempfile.TemporaryDirectory() as profile:
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            # No internet: every host name but the gateway's fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000", "--dump-dom", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        dom, errors = await asyncio.wait_for(browser.communicate(), 90)
    assert browser.returncode == 0, errors.decode()[-2000:]
    rendered = dom.decode()
    # Swagger UI has fetched the merged document and drawn one block per operation.
    for path in ("/api/v1/organizations", "/api/v1/analytics/overview", "/api/v1/admin/api-keys"):
        assert f'data-path="{path}"' in rendered, path
    assert TITLE in rendered
