"""Prometheus metrics of the gateway and of each service; the gateway's readiness report."""
from __future__ import annotations

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import eventually
from tests.gateway_inprocess import running_gateway, settings_for
from tests.harness import Databases, database_mode, pg_server_url


async def scrape(url: str) -> dict[str, list]:
    """Metric family name → samples, parsed as Prometheus would (fails on a malformed exposition)."""
    async with httpx.AsyncClient() as client:
        answer = await client.get(url + "/metrics")  # no key needed
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(answer.text)}


def labelled(samples: list, **labels) -> list:
    return [s for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]


async def test_gateway_metrics_count_requests_by_route_and_status_with_latency(stack, admin):
    assert (await admin.get("/organizations")).status_code == 200
    assert (await admin.get("/organizations/not-a-uuid")).status_code == 422
    families = await scrape(stack.urls["gateway"])
    requests = families["vmc_http_requests"]
    assert labelled(requests, service="gateway", route="/api/v1/organizations", method="GET", status="200")
    assert labelled(requests, service="gateway", route="/api/v1/organizations", method="GET", status="422")
    buckets = labelled(families["vmc_http_request_duration_seconds"], route="/api/v1/organizations")
    assert any(s.name.endswith("_bucket") and s.labels["le"] == "+Inf" and s.value >= 2 for s in buckets)
    assert "vmc_rate_limited" in families
    # Ids never become labels: one series per service segment, not per object.
    assert not [s for s in requests if "not-a-uuid" in s.labels.get("route", "")]


@pytest.mark.parametrize("service", ["registry", "activities", "analytics"])
async def test_each_service_exposes_requests_outbox_consumers_and_dead_letters(stack, service):
    families = await scrape(stack.urls[service])
    for name in ("vmc_http_requests", "vmc_http_request_duration_seconds", "vmc_outbox_backlog", "vmc_consumer_lag",
                 "vmc_dead_letters", "vmc_consumer_events"):
        assert name in families, (service, name)
    assert labelled(families["vmc_http_requests"], service=service)  # the gateway's calls, counted here too


async def test_outbox_backlog_and_consumer_lag_have_values(stack):
    async def registry_backlog_known() -> bool:
        return bool(labelled((await scrape(stack.urls["registry"]))["vmc_outbox_backlog"], service="registry"))

    async def analytics_lag_known() -> bool:
        return bool((await scrape(stack.urls["analytics"]))["vmc_consumer_lag"])

    await eventually(registry_backlog_known, what="the registry's outbox backlog gauge")
    await eventually(analytics_lag_known, what="the analytics consumer's lag gauge")
    # The series exists before any dead letter (alerts need it), and in the shared stack, whose events
    # are all well formed (the consumer tests use topics of their own), it must count none.
    dead = labelled((await scrape(stack.urls["analytics"]))["vmc_dead_letters"], consumer="analytics")
    assert [s.value for s in dead if s.name == "vmc_dead_letters_total"] == [0.0]


async def test_ready_reports_the_services_and_circuits(stack):
    async with httpx.AsyncClient(base_url=stack.urls["gateway"]) as client:
        answer = await client.get("/ready")
    assert answer.status_code == 200
    body = answer.json()
    assert body["checks"] == {"database": True}
    assert body["services"] == {"registry": "ready", "activities": "ready", "analytics": "ready"}
    assert set(body["circuits"].values()) == {"closed"}


async def test_ready_stays_200_when_a_service_is_away(stack):
    settings = settings_for(stack, activities_url="http://127.0.0.1:9")  # discard port: nothing answers
    async with running_gateway(settings) as (_, client):
        answer = await client.get("/ready")
    assert answer.status_code == 200
    assert answer.json()["services"]["activities"] == "unreachable"
    assert answer.json()["services"]["registry"] == "ready"


@pytest.mark.skipif(database_mode() != "postgresql", reason="drops a PostgreSQL database under the gateway")
async def test_ready_is_503_when_the_gateways_database_is_gone(stack, workdir):
    databases = Databases(workdir)
    url = databases.url("gateway_ready")
    try:
        async with running_gateway(settings_for(stack, database_url=url)) as (_, client):
            assert (await client.get("/ready")).status_code == 200
            conn = await asyncpg.connect(pg_server_url())
            try:
                await conn.execute(f'DROP DATABASE "{databases.created[0]}" WITH (FORCE)')
            finally:
                await conn.close()
            answer = await client.get("/ready")
            assert answer.status_code == 503 and answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["checks"] == {"database": False}
    finally:
        databases.drop()
