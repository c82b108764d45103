"""Tests that attack: the OWASP API Security Top 10 (2023) items that apply to this API, on the real stack.

Routes are read from the OpenAPI documents at run time (tests/integration/openapi_routes.py), so a
route added later is attacked too: a route with an id whose kind of object has no fixture here fails
the object-level test until someone adds one (and so decides how it is isolated).
"""
from __future__ import annotations

import asyncio
import base64
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from shared.caller import SCOPES, CallerContext, encode_caller
from shared.events import REGISTRY_TOPIC
from tests.api import walk
from tests.conftest import eventually
from tests.harness import Stack, unique
from tests.integration.openapi_routes import MISSING, Operation, example_body, route_table

PROBLEM = "application/problem+json"
REPO = Path(__file__).resolve().parents[2]


# ---- clients and keys ---------------------------------------------------------------------------
def client(stack: Stack, key: str | None = None, *, source: str | None = None, **kw: Any) -> httpx.AsyncClient:
    """A gateway client; `source` binds another loopback address (the gateway limits failures per address)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.AsyncHTTPTransport(local_address=source, limits=httpx.Limits(max_connections=200)) if source else None
    return httpx.AsyncClient(base_url=stack.api, headers=headers, timeout=30, transport=transport, **kw)


_sources = iter(f"127.{a}.{b}.{c}" for a in range(31, 60) for b in range(1, 250) for c in range(2, 250, 7))


def fresh_source() -> str:
    """A loopback address no other test has used, so failed-authentication budgets never mix."""
    return next(_sources)


async def new_key(admin: httpx.AsyncClient, organization_id: str, scopes=SCOPES, **fields: Any) -> dict:
    answer = await admin.post("/admin/api-keys", json={"name": unique("key"), "organization_id": organization_id,
                                                       "scopes": list(scopes), **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


def assert_problem(answer: httpx.Response, status: int | tuple[int, ...], what: str = "") -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert answer.status_code in statuses, f"{what}: expected {statuses}, got {answer.status_code}: {answer.text[:500]}"
    assert answer.headers["content-type"].startswith(PROBLEM), f"{what}: {answer.headers['content-type']}"
    body = answer.json()
    assert body["status"] == answer.status_code and body["type"].startswith("urn:vmc:problem:")
    return body


# ---- the world: organisations A and B, siblings under P, and objects of every kind ------------------
def _today() -> date:
    return date.today()


def person(organization_id: str) -> dict:
    """A 16-year-old (so a guardian is on record too): every personal field set to a unique value."""
    born = date(_today().year - 16, 6, 15)  # 15 or 16 years old today
    tag = uuid.uuid4().hex[:8]
    return {
        "name_latin": f"Sokha Pii{tag}",
        "name_km": f"សុខា{tag}",
        "sex": "female",
        "date_of_birth": born.isoformat(),
        "phone": "+85512" + str(uuid.uuid4().int)[:6],
        "email": f"pii{tag}@example.org",
        "residence_province": "12",
        "organization_id": organization_id,
        "consent": {"given": True, "given_at": datetime.now(timezone.utc).isoformat(),
                    "guardian_name": f"Guardian Pii{tag}", "guardian_relation": "mother"},
    }


def personal_strings(body: dict) -> list[str]:
    return [body["name_latin"], body["name_km"], body["phone"], body["email"], body["consent"]["guardian_name"]]


@dataclass
class World:
    stack: Stack
    admin: httpx.AsyncClient  # national, every scope
    parent: str  # P
    a: str  # A: the attacker's organisation, sibling of B
    b: str  # B: the victim
    keys: dict[str, str]  # "a", "b", "parent": every scope, not national
    routes: list[Operation]
    objects: dict[tuple[str, str | None], str] = field(default_factory=dict)
    people: dict[str, dict] = field(default_factory=dict)  # volunteer id → the body it was created with

    def collection_exists(self, collection: str) -> bool:
        return any(op.path.strip("/").split("/")[0] == collection or f"/{collection}" in op.path for op in self.routes)

    async def owned(self, kind: str, organization_id: str | None) -> str:
        """One object of `kind` owned by the organisation, made on first use (national kinds: one in all)."""
        spec = KINDS[kind]
        key = (kind, None if spec.public else organization_id)
        if key not in self.objects:
            self.objects[key] = await spec.create(self, organization_id or self.a)
        return self.objects[key]

    async def all_owned(self, organization_id: str) -> dict[str, str]:
        """An object of every private kind whose routes exist, owned by the organisation."""
        return {kind: await self.owned(kind, organization_id) for kind, spec in KINDS.items()
                if not spec.public and self.collection_exists(spec.collection)}

    async def post(self, path: str, body: dict) -> dict:
        answer = await self.admin.post(path, json=body)
        assert answer.status_code in (200, 201), f"POST {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json()

    def filler(self, owned: dict[str, str], organization_id: str) -> Callable[[str, dict], Any]:
        """Values that make a request body valid for a caller of `organization_id` (its own objects)."""

        def fill(name: str, schema: dict) -> Any:
            if name in ("organization_id", "parent_id"):
                return organization_id
            if name in REFERENCE_FIELDS and REFERENCE_FIELDS[name] in owned:
                return owned[REFERENCE_FIELDS[name]]
            if name == "program_id" and ("programs", None) in self.objects:
                return self.objects[("programs", None)]
            if name == "activity_type" and ("activity-types", None) in self.objects:
                return self.objects[("activity-types", None)]
            if name in ("location_code", "residence_province"):
                return "12"
            if name in ("location_codes", "province_codes"):
                return ["12"]
            if name in ("started_on", "ended_on", "date", "taken_on", "start_date"):
                return _today().isoformat()
            return MISSING

        return fill


# Body fields that point at an object another organisation may own → the kind of that object.
REFERENCE_FIELDS = {
    "organization_id": "organizations", "parent_id": "organizations", "volunteer_id": "volunteers",
    "duplicate_id": "volunteers", "project_id": "projects", "enrollment_id": "enrollments",
    "activity_id": "activities",
}
# Query parameters that filter by such an object.
REFERENCE_QUERY = {
    "organization_id": "organizations", "organization": "organizations", "parent_id": "organizations",
    "volunteer_id": "volunteers", "volunteer": "volunteers", "project_id": "projects", "project": "projects",
}


async def _organization(w: World, org: str) -> str:
    return (await w.post("/organizations", {"name": unique("org"), "kind": "ngo", "parent_id": org}))["id"]


async def _program(w: World, org: str) -> str:
    return (await w.post("/programs", {"code": "T" + uuid.uuid4().hex[:10].upper(), "name": unique("programme")}))["id"]


async def _project(w: World, org: str) -> str:
    program = await w.owned("programs", None)
    body = {"program_id": program, "organization_id": org, "name": unique("project"),
            "location_codes": ["12"], "start_date": "2026-01-01"}
    return (await w.post("/projects", body))["id"]


async def _volunteer(w: World, org: str) -> str:
    body = person(org)
    created = await w.post("/volunteers", body)
    w.people[created["id"]] = body
    return created["id"]


async def _enrollment(w: World, org: str) -> str:
    volunteer, project = await w.owned("volunteers", org), await w.owned("projects", org)
    return (await w.post(f"/volunteers/{volunteer}/enrollments",
                         {"project_id": project, "role": "member", "started_on": "2026-01-15"}))["id"]


async def _activity_type(w: World, org: str) -> str:
    listed = (await w.admin.get("/activity-types")).json()
    return (listed["items"] if isinstance(listed, dict) else listed)[0]["code"]


async def _activity(w: World, org: str) -> str:
    await w.owned("enrollments", org)  # the volunteer takes part in the project
    body = {"volunteer_id": await w.owned("volunteers", org), "project_id": await w.owned("projects", org),
            "activity_type": await w.owned("activity-types", None), "date": "2026-02-02", "hours": 2,
            "location_code": "12", "beneficiaries": {"female": 1, "male": 1, "other": 0, "children": 0},
            "description": "attack fixture", "client_reference": unique("ref")}
    return (await w.post("/activities", body))["id"]


async def _assessment(w: World, org: str) -> str:
    scores = {item: 3 for item in ("communication", "teamwork", "leadership", "problem_solving", "critical_thinking",
                                    "self_confidence")}
    body = {"volunteer_id": await w.owned("volunteers", org), "instrument": "soft-skills-v1", "phase": "baseline",
            "taken_on": "2026-02-02", "scores": scores}
    return (await w.post("/assessments", body))["id"]


async def _api_key(w: World, org: str) -> str:
    return (await new_key(w.admin, org, ["registry:read"]))["id"]


async def _location(w: World, org: str) -> str:
    return "12"


@dataclass(frozen=True)
class Kind:
    collection: str  # the path segment its routes live under
    create: Callable[[World, str], Awaitable[str]]  # makes one owned by the organisation → its id
    public: str = ""  # why every key may read it (national reference data), or "" if isolated


# Every kind of object a route may name by id. A route whose id names a kind missing here fails
# test_api1_* with "add a fixture": decide whether it is isolated (usual) or public (say why).
KINDS: dict[str, Kind] = {
    "organizations": Kind("organizations", _organization),
    "volunteers": Kind("volunteers", _volunteer),
    "projects": Kind("projects", _project),
    "enrollments": Kind("enrollments", _enrollment),
    "activities": Kind("activities", _activity),
    "assessments": Kind("assessments", _assessment),
    "api-keys": Kind("admin", _api_key),
    "activity-types": Kind("activity-types", _activity_type, public="the catalogue of activity types is national"),
    "programs": Kind("programs", _program, public="programmes are national: every key reads them, national keys create them"),
    "locations": Kind("locations", _location, public="the gazetteer is public reference data, the same for everyone"),
}


@pytest.fixture(scope="module")
async def world(stack: Stack):
    async with client(stack, stack.admin_key) as bootstrap:
        gdy = (await bootstrap.get("/organizations", params={"limit": 1})).json()["items"][0]["id"]
        # A national admin key of its own, limited high: these tests send hundreds of requests and must
        # not spend the bootstrap key's budget that other tests share.
        national = (await new_key(bootstrap, gdy, national=True, rate_limit_per_minute=1_000_000))["key"]
    async with client(stack, national) as admin:
        parent = (await admin.post("/organizations", json={"name": unique("P"), "kind": "ngo", "parent_id": gdy})).json()["id"]
        a = (await admin.post("/organizations", json={"name": unique("A"), "kind": "ngo", "parent_id": parent})).json()["id"]
        b = (await admin.post("/organizations", json={"name": unique("B"), "kind": "ngo", "parent_id": parent})).json()["id"]
        keys = {name: (await new_key(admin, org))["key"] for name, org in (("a", a), ("b", b), ("parent", parent))}
        yield World(stack, admin, parent, a, b, keys, await route_table(stack))


def resource_kind(op: Operation, param: str) -> str:
    return op.segment_before(param)


async def path_values(w: World, op: Operation, organization_id: str) -> dict[str, str]:
    return {p: await w.owned(resource_kind(op, p), organization_id) for p in op.path_params}


# ---- API1: broken object-level authorisation ----------------------------------------------------
async def test_api1_every_route_with_an_id_hides_other_organisations_objects(world: World):
    """A key of A (every scope, not national) gets a 404 for B's object on every route with an id;
    the same URL answers B's ancestor and a national key (so the 404 is isolation, not a bad URL)."""
    w = world
    failures: list[str] = []
    covered: list[str] = []
    with_ids = [op for op in w.routes if op.path_params]
    assert with_ids, "no route with an id found in the OpenAPI documents"
    async with client(w.stack, w.keys["a"]) as as_a, client(w.stack, w.keys["parent"]) as as_parent:
        owned_by_a = await w.all_owned(w.a)
        for op in with_ids:
            kinds = {p: resource_kind(op, p) for p in op.path_params}
            missing = sorted({k for k in kinds.values() if k not in KINDS})
            if missing:
                failures.append(f"{op}: add a fixture for {', '.join(missing)} in KINDS (isolated, or public with a reason)")
                continue
            values = await path_values(w, op, w.b)
            url = op.url(values)
            body = example_body(op, w.filler(owned_by_a, w.a)) if op.json_body_schema() is not None else None
            answer = await as_a.request(op.method, url, json=body)
            public = [KINDS[k].public for k in kinds.values() if KINDS[k].public]
            if public and op.method == "GET":
                expected: tuple[int, ...] = (200,)  # readable by all by design (see KINDS)
            elif public:
                expected = (403, 404)  # only national keys change national data
            else:
                expected = (404,)
            if answer.status_code not in expected:
                failures.append(f"{op} on B's object with A's key: {answer.status_code} (want {expected}) {answer.text[:200]}")
                continue
            if answer.status_code >= 400 and not answer.headers.get("content-type", "").startswith(PROBLEM):
                failures.append(f"{op}: {answer.status_code} is not problem+json")
            if op.method == "GET" and not public:
                for who, c in (("national key", w.admin), ("B's parent's key", as_parent)):
                    control = await c.get(url)
                    if control.status_code != 200:
                        failures.append(f"{op} on B's object with the {who}: {control.status_code} (want 200) {control.text[:200]}")
            covered.append(str(op) + (" (public by design)" if public else ""))
    print("\nobject-level authorisation covered:\n  " + "\n  ".join(covered))
    assert not failures, "\n".join(failures)


def list_operations(w: World) -> list[Operation]:
    return [op for op in w.routes if op.method == "GET" and not op.path_params and "limit" in op.query_names()]


async def test_api1_lists_never_show_other_organisations_objects(world: World):
    """B's objects never appear in any list A reads; A's own do, and a national key sees B's."""
    w = world
    owned_b, owned_a = await w.all_owned(w.b), await w.all_owned(w.a)
    lists = list_operations(w)
    assert lists, "no list routes found"
    failures, covered = [], []
    async with client(w.stack, w.keys["a"]) as as_a:
        for op in lists:
            seen = {item.get("id") for item in await walk(as_a, op.path)}
            leaked = {k: v for k, v in owned_b.items() if v in seen}
            if leaked:
                failures.append(f"{op}: A's list shows B's {leaked}")
            own_kind = next((k for k, spec in KINDS.items() if op.path == "/" + k), None)
            if own_kind in owned_a and not KINDS[own_kind].public:
                if owned_a[own_kind] not in seen:
                    failures.append(f"{op}: A's list misses A's own {own_kind} (the check above proves nothing)")
                national = {item.get("id") for item in await walk(w.admin, op.path)}
                if owned_b[own_kind] not in national:
                    failures.append(f"{op}: a national key does not see B's {own_kind}")
            covered.append(str(op))
    print("\nlists covered: " + ", ".join(covered))
    assert not failures, "\n".join(failures)


async def test_api1_filters_naming_another_organisations_object_reveal_nothing(world: World):
    """`?organization_id=<B>` (and project, volunteer...) answers A as if the id did not exist;
    analytics answers 404 (§6: another organisation's object is a 404 everywhere)."""
    w = world
    owned_b = await w.all_owned(w.b)
    failures, covered = [], []
    async with client(w.stack, w.keys["a"]) as as_a:
        for op in [op for op in w.routes if op.method == "GET" and not op.path_params]:
            for name in sorted(op.query_names() & set(REFERENCE_QUERY)):
                kind = REFERENCE_QUERY[name]
                if kind not in owned_b:
                    continue
                foreign = await as_a.get(op.path, params={name: owned_b[kind]})
                unknown = await as_a.get(op.path, params={name: str(uuid.uuid4())})
                where = f"{op}?{name}=<B's {kind}>"
                if foreign.status_code != unknown.status_code:
                    failures.append(f"{where}: {foreign.status_code}, but {unknown.status_code} for an unknown id (existence leaks)")
                if op.path.startswith("/analytics/") and foreign.status_code != 404:
                    failures.append(f"{where}: {foreign.status_code} (want 404)")
                if foreign.status_code == 200 and any(v in foreign.text for v in owned_b.values() if v != owned_b[kind]):
                    failures.append(f"{where}: the answer names B's objects")
                if foreign.status_code == 200 and foreign.json().get("items"):
                    failures.append(f"{where}: lists {len(foreign.json()['items'])} items of B")
                covered.append(where)
    print("\nfilters covered: " + ", ".join(covered))
    assert not failures, "\n".join(failures)


def batch_item_schema(op: Operation) -> dict | None:
    """The schema of one item when the body is a batch `{"items": [...]}`, else None."""
    items = op.resolve((op.json_body_schema() or {}).get("properties", {}).get("items", {}))
    item = op.resolve(items.get("items", {})) if items.get("type") == "array" else {}
    return item if item.get("properties") else None


async def test_api1_bodies_cannot_point_at_another_organisations_objects(world: World):
    """A body (or a batch item) naming B's organisation, volunteer or project — create, enrol, merge,
    move — is refused: a 404 or 422, or in a batch that item's error."""
    w = world
    owned_a, owned_b = await w.all_owned(w.a), await w.all_owned(w.b)
    failures, covered = [], []
    async with client(w.stack, w.keys["a"]) as as_a:
        for op in [op for op in w.routes if op.method in ("POST", "PUT", "PATCH") and op.json_body_schema()]:
            if op.path.startswith("/admin/"):
                continue  # API keys: the organisation rules are test_api5_*
            if any(resource_kind(op, p) not in KINDS or KINDS[resource_kind(op, p)].public for p in op.path_params):
                continue  # unknown kinds fail test_api1_every_route_*; national data is not A's to change
            item_schema = batch_item_schema(op)
            target = item_schema or op.json_body_schema() or {}
            for name in sorted(set(target.get("properties", {})) & set(REFERENCE_FIELDS)):
                kind = REFERENCE_FIELDS[name]
                if kind not in owned_b:
                    continue
                values = await path_values(w, op, w.a)
                body = example_body(op, w.filler(owned_a, w.a), target)
                body[name] = owned_b[kind] if kind != "organizations" else w.b
                answer = await as_a.request(op.method, op.url(values), json={"items": [body]} if item_schema else body)
                where = f"{op} with {'an item' if item_schema else 'a body'} naming {name}=<B's {kind}>"
                if item_schema and answer.status_code == 200:
                    item = answer.json()["items"][0]
                    if item["status"] != "error":
                        failures.append(f"{where}: item {item}")
                elif answer.status_code not in (404, 422):
                    failures.append(f"{where}: {answer.status_code} (want 404 or 422) {answer.text[:200]}")
                covered.append(where)
    print("\nbody references covered:\n  " + "\n  ".join(covered))
    assert covered, "no body field references another object: the route table looks empty"
    assert not failures, "\n".join(failures)


# CSV rows per import route: one the caller's own organisation may hold, one naming another's.
def _volunteer_rows(mine: str, theirs: str) -> bytes:
    tag = uuid.uuid4().hex[:8]
    rows = ["name_latin,sex,date_of_birth,residence_province,consent_given,organization_id",
            f"Mine Row{tag},female,2000-01-01,12,true,{mine}", f"Theirs Row{tag},male,2000-01-01,12,true,{theirs}"]
    return "\n".join(rows).encode()


IMPORT_ROWS: dict[str, Callable[[str, str], bytes]] = {"/volunteers/import": _volunteer_rows}


async def test_api1_import_rows_cannot_land_in_another_organisation(world: World):
    """A's import file with a row for B: that row (3, as a spreadsheet numbers it) is an error naming
    organization_id, A's row is created, and B's tree is unchanged."""
    w = world
    imports = [op for op in w.routes if op.method == "POST" and op.path.endswith("/import") and op.path not in ("/locations/import",)]
    assert imports, "no import routes in the OpenAPI documents"
    async with client(w.stack, w.keys["a"]) as as_a:
        for op in imports:
            assert op.path in IMPORT_ROWS, f"{op}: add rows for this import to IMPORT_ROWS"
            before = len(await walk(w.admin, op.path.rsplit("/", 1)[0], organization_id=w.b))
            answer = await as_a.post(op.path, content=IMPORT_ROWS[op.path](w.a, w.b), headers={"Content-Type": "text/csv"})
            assert answer.status_code == 200, answer.text
            summary = answer.json()
            assert (summary["created"], summary["errors"]) == (1, 1), summary
            row = next(i for i in summary["items"] if i["index"] == 3)
            assert row["status"] == "error" and "organization_id" in {str(p) for e in row["errors"] for p in e["loc"]}, row
            after = len(await walk(w.admin, op.path.rsplit("/", 1)[0], organization_id=w.b))
            assert after == before, f"{op}: B's tree grew by {after - before}"


async def test_organisation_isolation_ancestors_and_national_keys_read_down_the_tree(world: World):
    w = world
    async with client(w.stack, w.keys["parent"]) as as_parent, client(w.stack, w.keys["b"]) as as_b:
        for c, who in ((as_parent, "parent"), (w.admin, "national")):
            assert (await c.get(f"/organizations/{w.b}")).status_code == 200, who
        assert_problem(await as_b.get(f"/organizations/{w.parent}"), 404, "a child reading its parent")
        assert_problem(await as_b.get(f"/organizations/{w.a}"), 404, "a sibling")
        ids = {o["id"] for o in await walk(as_b, "/organizations")}
        assert w.b in ids and w.a not in ids and w.parent not in ids


# ---- API2: broken authentication ----------------------------------------------------------------
async def test_api2_missing_malformed_wrong_revoked_and_expired_keys_are_401(world: World):
    w = world
    live = await new_key(w.admin, w.a, ["registry:read"])
    prefix = live["key"].split("_")[1]
    revoked = await new_key(w.admin, w.a, ["registry:read"])
    expires = datetime.now(timezone.utc) + timedelta(seconds=1)  # a key cannot be made expired
    expired = await new_key(w.admin, w.a, ["registry:read"], expires_at=expires.isoformat())
    source = fresh_source()
    async with client(w.stack, revoked["key"], source=source) as c:
        assert (await c.get("/organizations")).status_code == 200
    assert (await w.admin.delete(f"/admin/api-keys/{revoked['id']}")).status_code == 204
    headers = {
        "missing": {},
        "empty bearer": {"Authorization": "Bearer"},
        "basic scheme": {"Authorization": "Basic dm1jOnNlY3JldA=="},
        "not our shape": {"Authorization": "Bearer not-a-key"},
        "empty parts": {"Authorization": "Bearer vmc__"},
        "huge": {"Authorization": "Bearer vmc_" + "a" * 20_000},
        "wrong secret, real prefix": {"Authorization": f"Bearer vmc_{prefix}_{'x' * 43}"},
        "unknown prefix": {"Authorization": f"Bearer vmc_{uuid.uuid4().hex[:8]}_{'x' * 43}"},
        "revoked": {"Authorization": f"Bearer {revoked['key']}"},
        "expired": {"Authorization": f"Bearer {expired['key']}"},
    }
    # Time passing is the behaviour here: from its expiry on the key must be refused, so wait for that
    # instant itself (waiting for a 401 instead would let a key that works past its time pass).
    await asyncio.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()))
    async with client(w.stack, source=source) as anonymous:
        for what, given in headers.items():
            for method, path in (("GET", "/organizations"), ("GET", f"/organizations/{w.a}"), ("GET", "/admin/api-keys")):
                answer = await anonymous.request(method, path, headers=given)
                if what == "huge" and answer.status_code == 431:
                    continue  # refused by the HTTP server for its header size: also no access
                body = assert_problem(answer, 401, f"{what} on {method} {path}")
                assert answer.headers.get("www-authenticate", "").lower().startswith("bearer"), what
                assert "Traceback" not in answer.text and body["detail"]


async def test_api2_brute_force_from_one_address_is_throttled(world: World):
    """Many wrong keys from one client address end in 429 with Retry-After, even for a right key
    (a guesser learns nothing more); other addresses are not affected."""
    w = world
    attacker = fresh_source()
    statuses = []
    async with client(w.stack, source=attacker) as c:
        for _ in range(200):
            answer = await c.get("/organizations", headers={"Authorization": f"Bearer vmc_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}"})
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                break
        assert statuses[-1] == 429, f"200 wrong keys from one address and never a 429: {sorted(set(statuses))}"
        assert set(statuses[:-1]) == {401}
        assert_problem(answer, 429)
        assert int(answer.headers["retry-after"]) >= 1
        again = await c.get("/organizations", headers={"Authorization": f"Bearer {w.keys['a']}"})
        assert_problem(again, 429, "a right key from the throttled address")
    async with client(w.stack, w.keys["a"], source=fresh_source()) as elsewhere:
        assert (await elsewhere.get("/organizations")).status_code == 200


async def test_api2_timing_does_not_reveal_whether_a_key_prefix_exists(world: World):
    """Median time of a wrong key with a real prefix vs an unknown prefix: within 2 ms or 30 %."""
    w = world
    real_prefix = w.keys["b"].split("_")[1]

    async def timed(c: httpx.AsyncClient, prefix: str) -> float:
        start = time.perf_counter()
        answer = await c.get("/organizations", headers={"Authorization": f"Bearer vmc_{prefix}_{uuid.uuid4().hex}"})
        elapsed = time.perf_counter() - start
        assert answer.status_code == 401, answer.text
        return elapsed

    verdicts = []
    for _attempt in range(3):  # a noisy machine: one clean round out of three is enough
        real, unknown = [], []
        for _batch in range(6):  # 10 failures per address stays below the brute-force throttle
            async with client(w.stack, source=fresh_source()) as c:
                await c.get("/health")  # connection made outside the measurement
                for _ in range(5):
                    real.append(await timed(c, real_prefix))
                    unknown.append(await timed(c, uuid.uuid4().hex[:8]))
        a, b = statistics.median(real), statistics.median(unknown)
        verdicts.append((a * 1000, b * 1000))
        print(f"\nwrong-key medians (ms): real prefix {a * 1000:.2f}, unknown prefix {b * 1000:.2f}")
        if abs(a - b) < max(0.002, 0.3 * max(a, b)):
            return
    raise AssertionError(f"medians (ms) real prefix vs unknown prefix differ in every round: {verdicts}")


# ---- API3: broken object property-level authorisation -------------------------------------------
SERVER_OWNED = {
    "id": str(uuid.uuid4()), "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
    "erased": False, "status": "verified", "version": 7, "total": 3, "merged_into": str(uuid.uuid4()),
}


def _error_fields(problem: dict) -> set[str]:
    return {str(part) for e in problem.get("errors") or [] for part in e.get("loc", [])}


async def test_api3_bodies_cannot_set_server_owned_fields(world: World):
    """id, timestamps, status, erased, version, total in any JSON body → 422 naming each field."""
    w = world
    owned_a = await w.all_owned(w.a)
    failures, covered = [], []
    for op in [op for op in w.routes if op.method in ("POST", "PUT", "PATCH") and op.json_body_schema()]:
        schema = op.json_body_schema() or {}
        declared = sorted(set(schema.get("properties", {})) & set(SERVER_OWNED))
        if declared:
            failures.append(f"{op}: the request schema declares server-owned fields {declared}")
        values = {p: await w.owned(resource_kind(op, p), w.a) for p in op.path_params}
        body = example_body(op, w.filler(owned_a, w.a))
        if not isinstance(body, dict):
            continue
        target, forged = body, SERVER_OWNED
        if isinstance(body.get("items"), list):  # a batch: the server-owned fields go into an item
            item_schema = op.resolve(schema["properties"]["items"]["items"])
            body["items"] = [example_body(op, w.filler(owned_a, w.a), item_schema)]
            target = body["items"][0]
            # A bulk decision's `id` names the activity decided: the client's to give, not a server-owned field.
            forged = {k: v for k, v in SERVER_OWNED.items() if k not in item_schema.get("properties", {})}
        target.update(forged)
        answer = await w.admin.request(op.method, op.url(values), json=body)
        if answer.status_code == 200 and "items" in answer.json():  # batch summary: per-item errors
            named = {str(p) for i in answer.json()["items"] for e in i.get("errors", []) for p in e.get("loc", [])}
        elif answer.status_code == 422:
            named = _error_fields(answer.json())
        else:
            failures.append(f"{op}: {answer.status_code} with server-owned fields (want 422) {answer.text[:200]}")
            continue
        unnamed = sorted(set(forged) - named)
        if unnamed:
            failures.append(f"{op}: 422 does not name {unnamed}: {answer.text[:300]}")
        covered.append(str(op))
    print("\nmass assignment covered: " + ", ".join(covered))
    assert covered and not failures, "\n".join(failures)


async def test_api3_a_key_without_registry_read_never_sees_personal_data(world: World):
    """Every scope but registry:read: volunteer reads are 403 and no answer anywhere carries a name,
    phone, email or guardian of a volunteer (analytics, activities, lists, errors)."""
    w = world
    assert w.collection_exists("volunteers"), "no /volunteers routes in the OpenAPI documents"
    owned_a = await w.all_owned(w.a)
    secrets_ = personal_strings(w.people[owned_a["volunteers"]])
    key = (await new_key(w.admin, w.a, [s for s in SCOPES if s != "registry:read"]))["key"]
    failures, checked = [], []
    async with client(w.stack, key) as c:
        # Reads, and empty updates (a write-only key must not read a person back through PATCH).
        for op in [op for op in w.routes if op.method == "GET" or (op.method == "PATCH" and op.path_params)]:
            values = {p: await w.owned(resource_kind(op, p), w.a) for p in op.path_params}
            answer = await c.request(op.method, op.url(values), json={} if op.method == "PATCH" else None)
            if op.method == "GET" and op.path.startswith(("/volunteers", "/enrollments")) and answer.status_code != 403:
                failures.append(f"{op}: {answer.status_code} (want 403 without registry:read)")
            leaked = [s for s in secrets_ if s in answer.text]
            if leaked:
                failures.append(f"{op}: shows personal data {leaked}")
            checked.append(str(op))
    assert checked and not failures, "\n".join(failures)


async def test_api3_events_carry_no_personal_data(world: World, broker):
    """Consume vmc.registry.v1 from the start: the volunteers' events are there, their names,
    phones, emails and guardians are not."""
    w = world
    assert w.collection_exists("volunteers"), "no /volunteers routes in the OpenAPI documents"
    volunteers = [await w.owned("volunteers", w.a), await w.owned("volunteers", w.b)]
    secrets_ = [s for v in volunteers for s in personal_strings(w.people[v])]
    consumer = AIOKafkaConsumer(REGISTRY_TOPIC, bootstrap_servers=broker.bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: set[str] = set()
    leaks: list[str] = []
    try:
        async def all_seen() -> bool:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batches.values():
                for record in records:
                    text = record.value.decode("utf-8")
                    leaks.extend(f"{orjson.loads(text)['type']}: {s}" for s in secrets_ if s in text)
                    seen.update(v for v in volunteers if v in text)
            return seen == set(volunteers)

        await eventually(all_seen, timeout=30, interval=0, what="the volunteers' events on " + REGISTRY_TOPIC)
    finally:
        await consumer.stop()
    assert not leaks, leaks


# ---- API4: unrestricted resource consumption -------------------------------------------------------
async def test_api4_bodies_over_the_limit_are_413_with_or_without_content_length(world: World):
    w = world
    big = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'", "kind": "ngo"}'

    async def chunks():
        for start in range(0, len(big), 64 * 1024):
            yield big[start:start + 64 * 1024]

    json_type = {"Content-Type": "application/json"}
    assert_problem(await w.admin.post("/organizations", content=big, headers=json_type), 413, "with Content-Length")
    assert_problem(await w.admin.post("/organizations", content=chunks(), headers=json_type), 413, "chunked")
    for op in [op for op in w.routes if op.path.endswith("/import") and op.method == "POST"]:
        huge = b"code,level\n" + b"9" * (50 * 1024 * 1024)
        assert_problem(await w.admin.post(op.path, content=huge, headers={"Content-Type": "text/csv"}), 413, str(op))
    assert (await w.admin.get("/organizations", params={"limit": 1})).status_code == 200


@pytest.mark.parametrize("depth", [10_000, 900])
async def test_api4_deeply_nested_json_is_a_4xx_and_the_service_keeps_answering(world: World, depth: int):
    w = world
    for nested in ("[" * depth + "]" * depth, '{"name":' * depth + '"x"' + "}" * depth):
        for path in ("/organizations", f"/organizations/{w.a}"):
            method = "POST" if path == "/organizations" else "PATCH"
            answer = await w.admin.request(method, path, content=nested, headers={"Content-Type": "application/json"})
            assert_problem(answer, (400, 413, 422), f"{method} {path} nested {depth}")
    assert (await w.admin.get(f"/organizations/{w.a}")).status_code == 200


async def test_api4_page_size_above_500_is_422_on_every_list(world: World):
    w = world
    lists = list_operations(w)
    for op in lists:
        values = {p: await w.owned(resource_kind(op, p), w.a) for p in op.path_params}
        body = assert_problem(await w.admin.get(op.url(values), params={"limit": 501}), 422, str(op))
        assert "limit" in _error_fields(body), f"{op}: {body}"
    assert lists


async def test_api4_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(world: World):
    w = world
    limited = (await new_key(w.admin, w.a, ["registry:read"], rate_limit_per_minute=5))["key"]
    async with client(w.stack, limited) as c, client(w.stack, w.keys["a"]) as other:
        answers = [await c.get("/organizations", params={"limit": 1}) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 5 + [429]
        assert [int(a.headers["ratelimit-remaining"]) for a in answers[:5]] == [4, 3, 2, 1, 0]
        refused = answers[-1]
        assert_problem(refused, 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-limit"] == "5" and refused.headers["ratelimit-remaining"] == "0"
        assert "ratelimit-reset" in refused.headers
        assert (await other.get("/organizations", params={"limit": 1})).status_code == 200


async def test_api4_one_key_cannot_take_every_worker(world: World):
    """Requests of one key held open up to its concurrency cap: the next is a 429, another key's is a 200."""
    w = world
    # National: its requests need no database query (no subtree to compute), so holding many open
    # tests the gateway, not the size of the database pools.
    greedy = (await new_key(w.admin, w.a, SCOPES, national=True, rate_limit_per_minute=100_000))["key"]
    release = asyncio.Event()

    async def slow_body():
        yield b'{"name": '
        await release.wait()
        yield b'"held", "kind": "not-a-kind"}'

    async with client(w.stack, greedy, source=fresh_source()) as c, client(w.stack, w.keys["b"]) as other:
        assert (await c.get("/organizations", params={"limit": 1})).status_code == 200  # the key is now cached
        held = [asyncio.create_task(c.post("/organizations", content=slow_body(), headers={"Content-Type": "application/json"}))
                for _ in range(48)]
        try:
            refused: list[httpx.Response] = []

            async def capped() -> bool:
                answer = await c.get("/organizations", params={"limit": 1})
                if answer.status_code == 429:
                    refused.append(answer)
                return bool(refused)

            try:
                await eventually(capped, timeout=15, what="a 429 while the key's requests are held open")
            except AssertionError as exc:
                ended = [t.result().status_code if not t.exception() else repr(t.exception()) for t in held if t.done()]
                raise AssertionError(f"{exc}; held requests that ended early: {ended}") from None
            assert_problem(refused[0], 429)
            assert refused[0].headers["retry-after"]
            assert (await other.get("/organizations", params={"limit": 1})).status_code == 200
        finally:
            release.set()
            answers = await asyncio.gather(*held, return_exceptions=True)
    # Held within the cap: read to the end, then refused as invalid (nothing created). Beyond it: a 429
    # sent before the body was read, after which the server may drop the connection mid-upload.
    completed = [a.status_code for a in answers if isinstance(a, httpx.Response)]
    dropped = [a for a in answers if not isinstance(a, httpx.Response)]
    assert all(isinstance(a, httpx.TransportError) for a in dropped), dropped
    assert set(completed) <= {422, 429} and 0 < completed.count(422) <= 32, sorted(completed)


def bulk_operations(w: World) -> list[Operation]:
    return [op for op in w.routes if op.method == "POST" and op.path.endswith(("/import", "/batch"))]


async def test_api4_bulk_routes_in_a_loop_meet_the_rate_limit(world: World):
    """1000-row imports and 1000-item batches sent in a loop (dry runs): each is answered, and the key's
    rate limit stops the loop; more than 1000 items in a batch is refused as a whole."""
    w = world
    bulk = [op for op in bulk_operations(w) if not op.path.startswith("/locations")]
    assert bulk, "no bulk routes (/volunteers/import, /activities/batch) in the OpenAPI documents"
    owned_a = await w.all_owned(w.a)
    for op in bulk:
        key = (await new_key(w.admin, w.a, SCOPES, rate_limit_per_minute=3))["key"]
        if op.path.endswith("/import"):
            rows = ["name_latin,sex,date_of_birth,residence_province,organization_id,consent_given"]
            rows += [f"Loop Person{i},female,2000-01-01,12,{w.a},true" for i in range(1000)]
            request = {"content": "\n".join(rows).encode(), "headers": {"Content-Type": "text/csv"}}
        else:
            item = example_body(op, w.filler(owned_a, w.a), op.json_body_schema()["properties"]["items"]["items"])
            request = {"json": {"items": [item] * 1000}}
            too_many = await w.admin.post(op.path, json={"items": [item] * 1001}, params={"dry_run": "true"})
            assert_problem(too_many, (413, 422), f"{op} with 1001 items")
        async with client(w.stack, key) as c:
            statuses = []
            for _ in range(5):
                start = time.monotonic()
                answer = await c.post(op.path, params={"dry_run": "true"}, **request)
                statuses.append(answer.status_code)
                assert time.monotonic() - start < 30, f"{op}: one 1000-row request took over 30 s"
                assert answer.status_code < 500, f"{op}: {answer.status_code} {answer.text[:300]}"
            assert statuses[:3] == [200] * 3 and statuses[3:] == [429, 429], f"{op}: {statuses}"


# ---- API5: broken function-level authorisation --------------------------------------------------
KNOWN_ADMIN_ROUTES = [("POST", "/admin/api-keys"), ("GET", "/admin/api-keys"), ("DELETE", "/admin/api-keys/{key_id}"),
                      ("GET", "/admin/audit-events")]


async def test_api5_admin_routes_refuse_keys_without_admin(world: World):
    """Every /admin route (from the merged document, and the known ones) → 403 for a national key with
    every scope but admin."""
    w = world
    routes = {(op.method, op.path) for op in w.routes if op.path.startswith("/admin/")}
    assert routes, "the merged OpenAPI document lists no /admin routes"
    routes |= set(KNOWN_ADMIN_ROUTES)
    key = (await new_key(w.admin, w.a, [s for s in SCOPES if s != "admin"], national=True))["key"]
    victim = await w.owned("api-keys", w.a)
    async with client(w.stack, key) as c:
        for method, path in sorted(routes):
            url = re.sub(r"\{[^}]+\}", victim, path)
            body = {"name": "x", "organization_id": w.a, "scopes": list(SCOPES), "national": True} if method == "POST" else None
            assert_problem(await c.request(method, url, json=body), 403, f"{method} {path}")
    listed = [k["id"] for k in (await w.admin.get("/admin/api-keys", params={"limit": 500})).json()["items"]]
    assert victim in listed


async def test_api5_an_organisation_admin_cannot_mint_national_or_foreign_keys(world: World):
    w = world
    async with client(w.stack, w.keys["a"]) as as_a:
        for body, what in (
            ({"organization_id": w.a, "national": True}, "a national key"),
            ({"organization_id": w.b}, "a key of a sibling"),
            ({"organization_id": w.parent}, "a key of its parent"),
        ):
            answer = await as_a.post("/admin/api-keys", json={"name": unique("k"), "scopes": list(SCOPES), **body})
            assert_problem(answer, 403, what)
        mine = await as_a.post("/admin/api-keys", json={"name": unique("k"), "organization_id": w.a, "scopes": ["registry:read"]})
        assert mine.status_code == 201
        listed = {k["organization_id"] for k in (await as_a.get("/admin/api-keys", params={"limit": 500})).json()["items"]}
        assert listed == {w.a}
        assert_problem(await as_a.delete(f"/admin/api-keys/{await w.owned('api-keys', w.b)}"), 404, "revoking B's key")


# ---- API7: server-side request forgery ----------------------------------------------------------
# Modules allowed to open outbound HTTP connections, and to where. Anything else that does fails
# the scan: review it (does a caller choose the URL?) and add it here with the reason.
OUTBOUND_HTTP_ALLOWED = {
    "gateway/proxy.py": "forwards to the configured service URLs only (path from the route table)",
    "gateway/openapi.py": "fetches the configured services' /openapi.json",
    "gateway/app.py": "readiness probes of the configured services",
    "services/activities/registry_view/client.py": "the registry's internal route at the configured VMC_REGISTRY_URL only",
    "services/analytics/rebuild.py": "the rebuild command's --url, given by the operator on the command line: "
                                     "no request chooses it (only its internal rebuild route is called)",
}
_OUTBOUND = re.compile(r"\b(aiohttp\.ClientSession|ClientSession\(|httpx\.(Async)?Client|urllib\.request|urlopen|"
                       r"requests\.(get|post|put|request|Session)|http\.client|socket\.create_connection)")


def test_api7_no_module_opens_outbound_http_except_the_reviewed_ones():
    found = {}
    for folder in ("services", "gateway", "shared"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            hits = sorted({m.group(0) for m in _OUTBOUND.finditer(text)})
            relative = str(path.relative_to(REPO))
            if hits and relative not in OUTBOUND_HTTP_ALLOWED:
                found[relative] = hits
    assert not found, f"outbound HTTP from modules not reviewed for SSRF: {found}"


async def test_api7_urls_in_records_are_stored_never_fetched(world: World):
    """Records holding URLs of a listener started here: the listener never gets a connection, while
    every service has processed the records (analytics counted the organisation)."""
    w = world
    connections: list[str] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(repr(await reader.read(200)))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    trap = f"http://127.0.0.1:{port}/ssrf"
    try:
        before = (await w.admin.get("/analytics/overview")).json()["organizations"]
        org = await w.admin.post("/organizations", json={"name": trap, "name_km": f"{trap}/km", "kind": "ngo", "parent_id": w.a},
                                 headers={"Idempotency-Key": trap, "Referer": trap, "X-Forwarded-Host": f"127.0.0.1:{port}",
                                          "Callback": trap})
        assert org.status_code == 201, org.text
        assert (await w.admin.patch(f"/organizations/{org.json()['id']}", json={"name": trap + "/again"})).status_code == 200
        for op in [op for op in w.routes if op.method == "POST" and op.json_body_schema()]:
            schema = op.json_body_schema() or {}
            item = schema.get("properties", {}).get("items")
            target = op.resolve(op.resolve(item).get("items", {})) if item else schema
            if "evidence_urls" in target.get("properties", {}):  # activities: evidence is stored, not fetched
                owned_a = await w.all_owned(w.a)
                body = example_body(op, w.filler(owned_a, w.a), target)
                body["evidence_urls"] = [trap + "/evidence.jpg"]
                sent = await w.admin.post(op.path, json={"items": [body]} if item else body)
                assert sent.status_code in (200, 201), f"{op}: {sent.status_code} {sent.text[:300]}"

        async def counted() -> bool:
            return (await w.admin.get("/analytics/overview")).json()["organizations"] >= before + 1

        await eventually(counted, what="analytics counting the organisation named by a URL")
        stored = (await w.admin.get(f"/organizations/{org.json()['id']}")).json()
        assert stored["name"] == trap + "/again"
    finally:
        server.close()
        await server.wait_closed()
    assert connections == [], connections


# ---- forged caller context ------------------------------------------------------------------------
def national_context(secret: str, now: float | None = None) -> dict[str, str]:
    caller = CallerContext(str(uuid.uuid4()), uuid.UUID("00000000-0000-4000-8000-000000000001"), frozenset(SCOPES), True)
    return encode_caller(caller, secret, now=now)


async def test_the_gateway_strips_caller_context_sent_by_a_client(world: World):
    """X-VMC-Caller/X-VMC-Signature from a client, even correctly signed, never reach a service:
    the request acts with the key's own rights."""
    w = world
    weak = (await new_key(w.admin, w.a, ["registry:read"]))["key"]
    forged = {
        "wrong secret": national_context("not-the-secret"),
        "right secret": national_context(w.stack.secret),
        "right secret, expired": national_context(w.stack.secret, now=time.time() - 3600),
    }
    async with client(w.stack, weak) as c:
        for what, headers in forged.items():
            assert_problem(await c.get(f"/organizations/{w.b}", headers=headers), 404, what)
            assert_problem(await c.post("/organizations", json={"name": unique("f"), "kind": "ngo"}, headers=headers), 403, what)
            ids = {o["id"] for o in await walk(c, "/organizations")} if what == "right secret" else set()
            assert w.b not in ids


async def test_services_refuse_requests_without_the_gateways_proof(world: World):
    w = world
    weak = CallerContext(str(uuid.uuid4()), uuid.UUID(w.a), frozenset({"registry:read"}), False)
    good = encode_caller(weak, w.stack.secret)
    tampered_value = encode_caller(CallerContext(weak.key_id, weak.organization_id, frozenset(SCOPES), True), w.stack.secret)
    attempts = {
        "no context": {},
        "wrong secret": national_context("not-the-secret"),
        "expired": national_context(w.stack.secret, now=time.time() - 3600),
        "signature of another context": {"x-vmc-caller": tampered_value["x-vmc-caller"], "x-vmc-signature": good["x-vmc-signature"]},
        "garbage": {"x-vmc-caller": "!!!", "x-vmc-signature": "00"},
        "gateway key as bearer": {"Authorization": f"Bearer {w.stack.admin_key}"},
    }
    async with httpx.AsyncClient(timeout=10) as direct:
        for service in ("registry", "activities", "analytics"):
            base = w.stack.urls[service] + "/api/v1"
            for what, headers in attempts.items():
                for path in ("/organizations", "/analytics/overview", "/activities", "/nowhere"):
                    assert_problem(await direct.get(base + path, headers=headers), 401, f"{service} {path}: {what}")
            assert_problem(await direct.post(base + "/organizations", json={"name": "x", "kind": "ngo"}), 401, service)
        control = await direct.get(w.stack.urls["registry"] + f"/api/v1/organizations/{w.a}", headers=good)
        assert control.status_code == 200, control.text


# ---- API8: security misconfiguration ------------------------------------------------------------
async def test_api8_errors_are_problems_without_internals_and_cors_is_off(world: World):
    w = world
    answers = {
        "unknown route": (await w.admin.get("/no-such-thing"), 404),
        "unknown route below a service": (await w.admin.get(f"/organizations/{w.a}/no/such/thing"), 404),
        "unknown route outside the API": (await w.admin.get(w.stack.urls["gateway"] + "/no-such-thing"), 404),
        "wrong method": (await w.admin.request("PUT", "/organizations"), 405),
        "wrong method on an item": (await w.admin.request("POST", f"/organizations/{w.a}"), 405),
        "wrong content type": (await w.admin.post("/organizations", content=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415),
        "text body": (await w.admin.post("/organizations", content=b"{}", headers={"Content-Type": "text/plain"}), 415),
        "not JSON": (await w.admin.post("/organizations", content=b"{nope", headers={"Content-Type": "application/json"}), (400, 422)),
        "bad id": (await w.admin.get("/organizations/not-a-uuid"), 422),
        "bad cursor": (await w.admin.get("/organizations", params={"cursor": "%%%"}), 422),
    }
    for what, (answer, status) in answers.items():
        body = assert_problem(answer, status, what)
        for marker in ("Traceback", 'File "/', "sqlalchemy", "asyncpg", "aiosqlite", "site-packages"):
            assert marker not in answer.text, f"{what}: {marker} in {body}"
        assert answer.headers.get("server", "").lower() in ("", "uvicorn")
    for path in ("/organizations", "/openapi.json"):
        origin = {"Origin": "https://evil.example"}
        plain = await w.admin.get(path, headers=origin)
        preflight = await w.admin.options(path, headers={**origin, "Access-Control-Request-Method": "GET"})
        for answer in (plain, preflight):
            assert "access-control-allow-origin" not in answer.headers, f"CORS answered for {path}"
            assert "access-control-allow-credentials" not in answer.headers


async def test_api8_a_nul_in_any_query_parameter_is_a_422_naming_it(world: World):
    """PostgreSQL refuses a NUL in text, so a filter carrying one (%00) would fail its query: on every
    route, for every query parameter, it is a 422 naming the parameter, checked before the route runs
    (found by schemathesis on the audit trail's filters, where it was a 500)."""
    w = world
    failures, covered = [], []
    for op in [op for op in w.routes if op.query_params]:
        values = await path_values(w, op, w.a)
        for name in sorted(op.query_names()):
            try:
                answer = await w.admin.request(op.method, op.url(values), params={name: "x\x00y"})
            except httpx.HTTPError as exc:
                failures.append(f"{op} ?{name}: {exc!r}")
                continue
            if answer.status_code != 422 or name not in _error_fields(assert_problem(answer, 422, f"{op} {name}")):
                failures.append(f"{op} ?{name}: {answer.status_code} {answer.text[:200]}")
            covered.append(f"{op} ?{name}")
    assert not failures, "\n".join(failures)
    assert any(c.startswith("GET /admin/audit-events") for c in covered) and len(covered) > 20, covered
    # The same refusal on the gateway's fast path and in a service reached with the gateway's proof.
    for target in ("/organizations?kind=%00", "/volunteers?q=a%00"):
        assert_problem(await w.admin.get(target), 422, target)
    direct = httpx.AsyncClient(base_url=w.stack.urls["registry"] + "/api/v1", timeout=30,
                               headers=encode_caller(CallerContext(key_id="t", organization_id=uuid.UUID(w.a),
                                                                   scopes=frozenset(SCOPES), national=False), w.stack.secret))
    async with direct:
        body = assert_problem(await direct.get("/programs", params={"code": "\x00"}), 422, "direct")
        assert "code" in _error_fields(body)


def _is_time(param: dict) -> bool:
    schema = param.get("schema", {})
    return any(option.get("format") == "date-time" for option in [schema, *schema.get("anyOf", [])])


async def test_api8_times_with_no_utc_equivalent_are_a_422_on_every_route(world: World):
    """A time the database driver cannot convert to UTC (year 9999 at -23:59 is past year 9999) in
    any time parameter, or inside a cursor, is a 422 naming it, never a 500; the latest and earliest
    times that do have one are answered."""
    w = world
    failures, covered = [], []
    for op in [op for op in w.routes if any(_is_time(p) for p in op.query_params)]:
        values = await path_values(w, op, w.a)
        for name in sorted(p["name"] for p in op.query_params if _is_time(p)):
            for moment in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):
                answer = await w.admin.request(op.method, op.url(values), params={name: moment})
                if answer.status_code != 422 or name not in _error_fields(assert_problem(answer, 422, f"{op} {name}")):
                    failures.append(f"{op} ?{name}={moment}: {answer.status_code} {answer.text[:200]}")
            for moment in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"):
                answer = await w.admin.request(op.method, op.url(values), params={name: moment})
                if answer.status_code != 200:
                    failures.append(f"{op} ?{name}={moment}: {answer.status_code} {answer.text[:200]}")
            covered.append(f"{op} ?{name}")
    cursor = base64.urlsafe_b64encode(orjson.dumps(["9999-12-31T23:59:59-23:59", str(uuid.uuid4())])).decode().rstrip("=")
    for op in list_operations(w):
        values = await path_values(w, op, w.a)
        answer = await w.admin.get(op.url(values), params={"cursor": cursor})
        if answer.status_code != 422 or "cursor" not in _error_fields(assert_problem(answer, 422, f"{op} cursor")):
            failures.append(f"{op} ?cursor: {answer.status_code} {answer.text[:200]}")
        covered.append(f"{op} ?cursor")
    assert not failures, "\n".join(failures)
    assert {"GET /admin/audit-events ?from", "GET /organizations ?updated_since"} <= set(covered), covered


async def raw_get(stack: Stack, target: str, key: str) -> tuple[int, dict[str, str], bytes]:
    """GET with the request target sent byte for byte (clients normalise `..` and escapes away)."""
    port = stack.ports["gateway"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("target", [
    "/api/v1/organizations/../../../metrics",
    "/api/v1/organizations/%2E%2E/%2E%2E/%2E%2E/metrics",
    "/api/v1/analytics/..%2F..%2F..%2Fopenapi.json",
    "/api/v1/organizations/./../../../ready",
    "/api/v1/locations/%3F",
    "/api/v1/organizations%3Fkind=ngo",
    "/api/v1/organizations/",
])
async def test_api8_paths_cannot_reach_a_services_internal_routes(world: World, target: str):
    """Dot segments, encoded slashes and question marks stay in the path: never a service's /metrics,
    /ready or document by the back door, never a redirect to a service's own address."""
    status, headers, body = await raw_get(world.stack, target, world.keys["a"])
    assert status in (404, 422), (status, body[:300])
    assert headers["content-type"].startswith(PROBLEM)
    assert "location" not in headers
    assert b"vmc_http_requests_total" not in body and b'"openapi"' not in body


async def test_api8_the_key_database_away_is_a_503_problem(stack: Stack):
    """With its key database unreachable, the gateway answers a retryable 503 problem, not a crash."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from tests.gateway_inprocess import running_gateway, settings_for

    dead = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    try:
        async with running_gateway(settings_for(stack)) as (app, c):
            app.state.keys._maker = async_sessionmaker(dead)
            answer = await c.get("/api/v1/organizations", headers={"Authorization": f"Bearer vmc_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}"})
            assert_problem(answer, 503)
            assert answer.headers["retry-after"] == "1" and "Traceback" not in answer.text
    finally:
        await dead.dispose()


async def test_api8_an_unexpected_error_is_a_500_problem_with_its_request_id():
    """A bug in a route: the answer is a problem without internals, carrying the request id that the
    log line carries too (so support can find it)."""
    from fastapi import FastAPI

    from shared.errors import install_error_handlers
    from shared.http import RequestContextMiddleware
    from shared.metrics import Metrics

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, metrics=Metrics("attack-test"))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("internal detail /srv/secret.py line 42")

    transport = httpx.ASGITransport(app=app)  # nothing reaches the server after the 500 (it would close the connection)
    async with httpx.AsyncClient(transport=transport, base_url="http://service.test") as c:
        answer = await c.get("/boom", headers={"X-Request-ID": "attack-500"})
    body = assert_problem(answer, 500)
    assert body["request_id"] == answer.headers["x-request-id"] == "attack-500"
    assert "secret" not in answer.text and "RuntimeError" not in answer.text
