"""The audit trail: reads of personal data, exports and key changes are recorded, without the personal
data; admins query it with filters; nothing can change or delete an entry."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.migrations import MIGRATIONS
from shared.db import make_engine, migrate
from tests.api import pages
from tests.conftest import eventually
from tests.harness import unique

ORG = "0e4f6a8b-1c2d-4e3f-9a5b-6c7d8e9f0a1b"
OTHER_ORG = "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
PERSONAL = "Sokha Chan"


async def new_client(stack, admin: httpx.AsyncClient, scopes: list[str], org: str = ORG) -> tuple[httpx.AsyncClient, dict]:
    body = {"name": unique("audit"), "organization_id": org, "scopes": scopes}
    created = (await admin.post("/admin/api-keys", json=body)).json()
    client = httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {created['key']}"}, timeout=30)
    return client, created


async def entries(admin: httpx.AsyncClient, expected: int, **filters) -> list[dict]:
    found: list[dict] = []

    async def arrived() -> bool:
        nonlocal found
        answer = await admin.get("/admin/audit-events", params={"limit": 500, **filters})
        assert answer.status_code == 200, answer.text
        found = answer.json()["items"]
        return len(found) >= expected

    await eventually(arrived, timeout=10, what=f"{expected} audit entries for {filters}")
    return found


async def test_reads_of_personal_data_exports_and_key_changes_are_recorded(stack, admin):
    reader, key = await new_client(stack, admin, ["registry:read", "registry:write", "analytics:read"])
    volunteer = str(uuid.uuid4())
    async with reader:
        calls = [
            ("volunteer.list", "volunteers", await reader.get("/volunteers", params={"q": PERSONAL})),
            ("volunteer.read", f"volunteers/{volunteer}", await reader.get(f"/volunteers/{volunteer}")),
            ("volunteer.duplicates", "volunteers/duplicates", await reader.get("/volunteers/duplicates")),
            ("volunteer.import", "volunteers/import", await reader.post(
                "/volunteers/import", params={"dry_run": "true"}, content=f"name_latin\n{PERSONAL}\n".encode(),
                headers={"content-type": "text/csv"})),
            ("volunteer.erase", f"volunteers/{volunteer}", await reader.delete(f"/volunteers/{volunteer}")),
            ("export.dhis2", "analytics/export/dhis2", await reader.get("/analytics/export/dhis2", params={"period": "202603"})),
        ]
        not_audited = await reader.get("/organizations")
    assert not_audited.status_code == 200

    found = await entries(admin, len(calls), actor=key["prefix"])
    assert len(found) == len(calls)  # the organisations list is not personal data: not recorded
    by_request = {e["request_id"]: e for e in found}
    for action, object_, response in calls:
        recorded = by_request[response.headers["x-request-id"]]
        assert (recorded["action"], recorded["object"], recorded["status"]) == (action, object_, response.status_code)
        assert recorded["actor_key_id"] == key["id"] and recorded["organization_id"] == ORG
    assert PERSONAL not in str(found) and "Sokha" not in str(found)
    at = [datetime.fromisoformat(e["at"]) for e in found]
    assert at == sorted(at, reverse=True) and all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in at)

    revoked = await admin.delete(f"/admin/api-keys/{key['id']}")
    assert revoked.status_code == 204
    changes = await entries(admin, 2, object=f"api-keys/{key['id']}")
    assert sorted(e["action"] for e in changes) == ["api_key.create", "api_key.revoke"]


async def test_filters_and_pages(stack, admin):
    reader, key = await new_client(stack, admin, ["registry:read"])
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    async with reader:
        for id_ in ids:
            await reader.get(f"/volunteers/{id_}")
        await reader.get("/volunteers")
    await entries(admin, 4, actor=key["prefix"])

    reads = await entries(admin, 3, actor=key["id"], action="volunteer.read")
    assert {e["object"] for e in reads} == {f"volunteers/{i}" for i in ids}
    assert len(await entries(admin, 4, actor=key["prefix"], action="volunteer.*")) == 4
    (one,) = await entries(admin, 1, actor=key["prefix"], object=f"volunteers/{ids[1]}")
    assert one["action"] == "volunteer.read"
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    window = {"actor": key["prefix"], "from": before.isoformat(), "to": after.isoformat()}
    assert len(await entries(admin, 4, **window)) == 4
    empty = await admin.get("/admin/audit-events", params={**window, "from": after.isoformat(), "to": (after + timedelta(hours=1)).isoformat()})
    assert empty.json()["items"] == []

    walked = [page async for page in pages(admin, "/admin/audit-events", actor=key["prefix"], limit=3)]
    assert [len(p) for p in walked] == [3, 1]
    assert len({e["id"] for p in walked for e in p}) == 4


@pytest.mark.parametrize(
    ("params", "field"),
    [({"from": "yesterday"}, "from"), ({"from": "2026-01-01T00:00:00"}, "from"), ({"limit": 501}, "limit"),
     ({"cursor": "not-a-cursor"}, "cursor"), ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to")],
)
async def test_bad_filters_are_422_naming_the_field(admin, params, field):
    answer = await admin.get("/admin/audit-events", params=params)
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert any(field in err["loc"] for err in answer.json()["errors"])


async def test_an_organisations_admin_sees_its_own_organisations_entries_only(stack, admin):
    org_admin, org_key = await new_client(stack, admin, ["admin", "registry:read"], org=OTHER_ORG)
    outsider, outsider_key = await new_client(stack, admin, ["registry:read"])
    async with org_admin, outsider:
        await outsider.get(f"/volunteers/{uuid.uuid4()}")
        own = await org_admin.get(f"/volunteers/{uuid.uuid4()}")
        await entries(admin, 1, actor=outsider_key["prefix"])
        seen = await entries(org_admin, 1, actor=org_key["prefix"])
        assert seen[0]["request_id"] == own.headers["x-request-id"]
        everything = (await org_admin.get("/admin/audit-events", params={"limit": 500})).json()["items"]
        assert everything and {e["organization_id"] for e in everything} == {OTHER_ORG}
        hidden = (await org_admin.get("/admin/audit-events", params={"actor": outsider_key["prefix"]})).json()["items"]
        assert hidden == []


async def test_no_route_changes_or_deletes_entries(stack, admin):
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        answer = await admin.request(method, "/admin/audit-events", json={})
        assert answer.status_code == 405, (method, answer.status_code)
        answer = await admin.request(method, f"/admin/audit-events/{uuid.uuid4()}", json={})
        assert answer.status_code in (404, 405), (method, answer.status_code)
    paths = (await admin.get("/openapi.json")).json()["paths"]
    assert [set(ops) for path, ops in paths.items() if "audit" in path] == [{"get"}]


async def assert_append_only(url: str) -> None:
    engine = make_engine(url)
    try:
        await migrate(engine, MIGRATIONS)
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO audit_events (id, at, actor_prefix, action, object, status) "
                "VALUES (:id, :at, 'test', 'volunteer.read', 'volunteers/x', 200)"
            ), {"id": uuid.uuid4().hex if engine.dialect.name == "sqlite" else uuid.uuid4(), "at": datetime.now(timezone.utc).replace(tzinfo=None)})
        for statement in ("UPDATE audit_events SET action = 'changed'", "DELETE FROM audit_events"):
            with pytest.raises(DBAPIError, match="append-only"):
                async with engine.begin() as conn:
                    await conn.execute(text(statement))
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="append-only"):
                async with engine.begin() as conn:
                    await conn.execute(text("TRUNCATE audit_events"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM audit_events WHERE action = 'changed'"))).scalar_one() == 0
            assert (await conn.execute(text("SELECT count(*) FROM audit_events"))).scalar_one() >= 1
    finally:
        await engine.dispose()


async def test_the_table_refuses_update_and_delete_on_the_running_gateways_database(stack):
    await assert_append_only(stack.db_urls["gateway"])


async def test_the_table_refuses_update_and_delete_on_sqlite_too(tmp_path):
    await assert_append_only(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
