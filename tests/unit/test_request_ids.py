"""Request ids: a usable X-Request-Id is echoed, anything else gets a new UUID-shaped id, at the gateway
(from the headers its server noted) and on a service called directly; and the refusal counter is the
gateway's alone."""
from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway.headers import WATCHED, request_id_of
from gateway.metrics import Metrics as GatewayMetrics
from shared.http import RequestContextMiddleware
from shared.metrics import Metrics


def gateway_scope(request_id: bytes | None) -> dict:
    """A scope as gateway/server.py makes it: the header list and the headers it noted."""
    headers = [(b"host", b"gw")] + ([(b"x-request-id", request_id)] if request_id is not None else [])
    return {"headers": headers, WATCHED: {name: value for name, value in headers if name != b"host"}}


def test_the_gateway_echoes_a_usable_request_id_and_replaces_any_other():
    assert request_id_of(gateway_scope(b"trace-1")) == "trace-1"
    assert request_id_of(gateway_scope(b"x" * 200)) == "x" * 200
    made = [request_id_of(gateway_scope(sent)) for sent in (None, b"", b"x" * 201, None)]
    assert len(set(made)) == 4
    for rid in made:
        assert str(uuid.UUID(rid)) == rid and uuid.UUID(rid).version == 4


async def test_a_service_called_directly_makes_a_uuid_and_echoes_a_sent_id():
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, metrics=Metrics("test"))

    @app.get("/ok")
    async def ok():
        return {}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        made = [(await client.get("/ok", headers=headers)).headers["x-request-id"]
                for headers in ({}, {"x-request-id": "x" * 201}, {})]
        echoed = (await client.get("/ok", headers={"x-request-id": "trace-2"})).headers["x-request-id"]
    assert echoed == "trace-2"
    assert len(set(made)) == 3 and all(uuid.UUID(rid).version == 4 for rid in made)


def test_only_the_gateway_exports_the_rate_limit_refusals():
    def families(metrics: Metrics) -> set[str]:
        return {family.name for family in text_string_to_metric_families(metrics.render().decode())}

    gateway = GatewayMetrics()
    gateway.rate_limited.labels("rate").inc()
    assert "vmc_rate_limited" in families(gateway) and "vmc_http_requests" in families(gateway)
    assert "vmc_rate_limited" not in families(Metrics("registry"))
