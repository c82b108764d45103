"""CORS: off unless origins are configured; then only those, preflights answered by the gateway."""
from __future__ import annotations

import pytest

from gateway.settings import GatewaySettings
from tests.gateway_inprocess import running_gateway

ALLOWED = "https://dashboard.example.org"
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}


def settings(tmp_path, origins: str = "") -> GatewaySettings:
    nowhere = "http://127.0.0.1:9"  # no upstream is called: CORS is decided before routing
    return GatewaySettings(data_dir=tmp_path, cors_origins=origins, registry_url=nowhere, activities_url=nowhere,
                           analytics_url=nowhere, log_level="WARNING")


async def test_off_by_default(tmp_path):
    async with running_gateway(settings(tmp_path)) as (_, client):
        simple = await client.get("/health", headers={"origin": ALLOWED})
        preflight = await client.options("/api/v1/organizations", headers={"origin": ALLOWED, **PREFLIGHT})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 401  # no preflight answer: it is an ordinary, unauthenticated request


async def test_only_configured_origins(tmp_path):
    async with running_gateway(settings(tmp_path, f"{ALLOWED}, https://other.example.org")) as (_, client):
        preflight = await client.options("/api/v1/organizations", headers={"origin": ALLOWED, **PREFLIGHT})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        refused = await client.options("/api/v1/organizations", headers={"origin": "https://evil.example", **PREFLIGHT})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

        simple = await client.get("/api/v1/organizations", headers={"origin": ALLOWED})
        assert simple.status_code == 401  # CORS does not replace the API key
        assert simple.headers["access-control-allow-origin"] == ALLOWED
        exposed = simple.headers["access-control-expose-headers"].lower()
        assert "retry-after" in exposed and "ratelimit-remaining" in exposed and "x-request-id" in exposed

        stranger = await client.get("/health", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers


@pytest.mark.parametrize("origins", ["", " , "])
async def test_blank_setting_is_off(tmp_path, origins):
    async with running_gateway(settings(tmp_path, origins)) as (app, client):
        answer = await client.get("/health", headers={"origin": ALLOWED})
    assert "access-control-allow-origin" not in answer.headers
