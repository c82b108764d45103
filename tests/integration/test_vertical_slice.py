"""An organisation registered through the gateway reaches analytics through Kafka."""
from __future__ import annotations

import httpx

from tests.conftest import eventually
from tests.api import walk
from tests.eventlog import find_events
from tests.harness import unique


async def registry_count(client: httpx.AsyncClient) -> int:
    return len(await walk(client, "/organizations"))


async def analytics_count(client: httpx.AsyncClient) -> int:
    return (await client.get("/analytics/overview")).json()["organizations"]


async def test_organization_created_reaches_analytics(admin: httpx.AsyncClient):
    async def caught_up(expected: int):
        async def check() -> bool:
            return await analytics_count(admin) == expected
        return check

    known = await registry_count(admin)
    await eventually(await caught_up(known), what="analytics catching up with the registry")

    created = await admin.post("/organizations", json={"name": unique("ngo"), "kind": "ngo", "province_codes": ["12"]})
    assert created.status_code == 201, created.text
    org = created.json()
    assert org["kind"] == "ngo" and org["province_codes"] == ["12"]

    await eventually(await caught_up(known + 1), what="analytics counting the new organisation")

    async def as_of_covers_it() -> bool:
        # The overview's other figures are read from the derived tables, whose `as_of` the upkeep moves up to
        # the batch's a moment after the batch that counted the organisation committed.
        overview = (await admin.get("/analytics/overview")).json()
        return overview["organizations"] == known + 1 and overview["as_of"] >= org["created_at"][:19]

    await eventually(as_of_covers_it, what="the overview's as_of reaching the organisation's creation")


async def test_idempotency_key_replays_and_conflicts(admin: httpx.AsyncClient):
    key = unique("idem")
    body = {"name": unique("club"), "kind": "youth_club"}
    first = await admin.post("/organizations", json=body, headers={"Idempotency-Key": key})
    again = await admin.post("/organizations", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    other = await admin.post("/organizations", json={**body, "kind": "ngo"}, headers={"Idempotency-Key": key})
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    # Every page: the shared database holds more organisations than one page as the suite goes on.
    assert sum(1 for o in await walk(admin, "/organizations") if o["name"] == body["name"]) == 1


async def test_request_id_flows_from_http_into_the_event(admin: httpx.AsyncClient, stack):
    request_id = unique("req")
    response = await admin.post("/organizations", json={"name": unique("school"), "kind": "school"},
                                headers={"X-Request-ID": request_id})
    assert response.status_code == 201
    assert response.headers["x-request-id"] == request_id
    org_id = response.json()["id"]
    [event] = await find_events(stack.broker.bootstrap, "vmc.registry.v1", lambda e: e.get("subject") == org_id)
    assert event["type"] == "vmc.organization.created"
    assert event["specversion"] == "1.0" and event["source"] == "/registry"
    assert event["requestid"] == request_id
    assert event["_key"] == org_id.encode()
    assert event["data"]["id"] == org_id


async def test_generated_request_id_is_echoed_in_problems(anonymous: httpx.AsyncClient):
    response = await anonymous.get("/api/v1/organizations")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["status"] == 401 and body["type"].startswith("urn:vmc:problem:")


async def test_patch_cannot_null_required_fields(admin: httpx.AsyncClient):
    org = (await admin.post("/organizations", json={"name": unique("ngo"), "kind": "ngo", "province_codes": ["12"]})).json()
    for field in ("kind", "province_codes"):
        response = await admin.patch(f"/organizations/{org['id']}", json={field: None})
        assert response.status_code == 422, response.text
        assert response.json()["errors"] == [{"loc": ["body", field], "msg": "cannot be null"}]
    both_names = await admin.patch(f"/organizations/{org['id']}", json={"name": None})
    assert both_names.status_code == 422  # it has no Khmer name: a nameless organisation is refused
    assert (await admin.get(f"/organizations/{org['id']}")).json() == org
