"""API keys: shown once, stored hashed, made by the admin API or `vmc keys`; revocation and expiry bite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select

from gateway.keys import ApiKey
from shared.db import make_engine, make_sessionmaker
from tests.api import walk
from tests.conftest import eventually
from tests.harness import unique

ORG = "3f2b6c1e-7d4a-4e59-9b8c-2a1d0e9f8c71"


def key_body(**overrides) -> dict:
    return {"name": unique("key"), "organization_id": ORG, "scopes": ["registry:read"], **overrides}


def vmc(stack, *args: str) -> subprocess.CompletedProcess:
    """The command-line tool as an operator runs it, against the stack's gateway database."""
    env = {**os.environ, "VMC_GATEWAY_DATABASE_URL": stack.db_urls["gateway"], "VMC_INTERNAL_SECRET": stack.secret,
           "VMC_DATA_DIR": str(stack.workdir), "VMC_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=60)


async def stored_key(stack, prefix: str) -> ApiKey:
    engine = make_engine(stack.db_urls["gateway"])
    try:
        async with make_sessionmaker(engine)() as session:
            return (await session.execute(select(ApiKey).where(ApiKey.prefix == prefix))).scalar_one()
    finally:
        await engine.dispose()


async def status_with(stack, key: str, path: str = "/organizations") -> int:
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        return (await client.get(path)).status_code


async def test_created_key_is_shown_once_stored_hashed_and_listed_by_prefix(stack, admin):
    created = await admin.post("/admin/api-keys", json=key_body())
    assert created.status_code == 201, created.text
    body = created.json()
    key, prefix = body["key"], body["prefix"]
    assert key.startswith(f"vmc_{prefix}_") and len(key) > 40

    row = await stored_key(stack, prefix)
    assert row.key_hash != key and key.split("_", 2)[2] not in row.key_hash and len(row.key_hash) == 64

    listed = await walk(admin, "/admin/api-keys")  # every page: the suite's keys outgrow one
    mine = [k for k in listed if k["id"] == body["id"]]
    assert mine and mine[0]["prefix"] == prefix and "key" not in mine[0] and "key_hash" not in mine[0]
    assert key not in json.dumps(listed)

    assert await status_with(stack, key) == 200
    assert await status_with(stack, key[:-1] + ("A" if key[-1] != "A" else "B")) == 401


async def test_revocation_through_the_admin_api_is_immediate(stack, admin):
    body = (await admin.post("/admin/api-keys", json=key_body())).json()
    assert await status_with(stack, body["key"]) == 200
    assert (await admin.delete(f"/admin/api-keys/{body['id']}")).status_code == 204
    assert await status_with(stack, body["key"]) == 401  # same replica: the cache is dropped at once


async def test_expiry_takes_effect_without_any_change(stack, admin):
    soon = datetime.now(timezone.utc) + timedelta(seconds=2)
    body = (await admin.post("/admin/api-keys", json=key_body(expires_at=soon.isoformat()))).json()
    assert await status_with(stack, body["key"]) == 200

    async def refused() -> bool:
        return await status_with(stack, body["key"]) == 401

    await eventually(refused, timeout=5, what="the expired key being refused")
    assert datetime.now(timezone.utc) >= soon


async def test_missing_scope_is_403_and_non_national_admins_stay_in_their_organisation(stack, admin):
    reader = (await admin.post("/admin/api-keys", json=key_body())).json()
    assert await status_with(stack, reader["key"], "/admin/api-keys") == 403
    org_admin = (await admin.post("/admin/api-keys", json=key_body(scopes=["admin"]))).json()
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {org_admin['key']}"}) as client:
        assert (await client.post("/admin/api-keys", json=key_body(national=True))).status_code == 403
        other_org = key_body(organization_id="8e1c2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
        assert (await client.post("/admin/api-keys", json=other_org)).status_code == 403
        listed = await walk(client, "/admin/api-keys")
        assert listed and {k["organization_id"] for k in listed} == {ORG}


async def test_cli_key_works_on_the_running_gateway_and_revocation_bites_within_the_cache_time(stack, admin):
    made = vmc(stack, "keys", "create", "--name", unique("cli"), "--organization-id", ORG, "--scope", "registry:read",
               "--rate-limit", "1000", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert await status_with(stack, created["key"]) == 200

    listed = vmc(stack, "keys", "list", "--json")
    assert listed.returncode == 0 and created["key"] not in listed.stdout
    assert any(json.loads(line)["prefix"] == created["prefix"] for line in listed.stdout.splitlines())

    revoked = vmc(stack, "keys", "revoke", created["id"])
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()

    async def refused() -> bool:
        return await status_with(stack, created["key"]) == 401

    await eventually(refused, timeout=5, what="the gateway refusing the key revoked with the CLI")
    assert time.monotonic() - started <= 2.0 + 1.0  # key_cache_seconds (2 s) plus a request's time

    audit = (await admin.get("/admin/audit-events", params={"actor": "cli", "object": f"api-keys/{created['id']}"})).json()
    assert sorted(e["action"] for e in audit["items"]) == ["api_key.create", "api_key.revoke"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"scopes": ["registry:read", "root"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "9999-12-31T23:59:59-23:59"}, "expires_at"),
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"organization_id": "GDY"}, "organization_id"),
        ({"key_hash": "0" * 64}, "key_hash"),
    ],
)
async def test_bad_key_requests_are_422_naming_the_field(admin, overrides, field):
    answer = await admin.post("/admin/api-keys", json=key_body(**overrides))
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert any(field in err["loc"] for err in answer.json()["errors"]), answer.json()


async def test_admin_routes_count_against_the_keys_rate_limit(stack, admin):
    body = (await admin.post("/admin/api-keys", json=key_body(scopes=["admin"], rate_limit_per_minute=2))).json()
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {body['key']}"}) as client:
        statuses = [(await client.get("/admin/api-keys")).status_code for _ in range(3)]
        refused = await client.get("/admin/audit-events")
    assert statuses == [200, 200, 429]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
