"""The gazetteer through the gateway: listing and search in both scripts, and the national CSV import."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from services.registry.settings import GDY_ORGANIZATION_ID
from tests.eventlog import find_events
from tests.api import walk
from tests.factories import fresh_district
from tests.harness import unique

HEADER = "code,level,name_en,name_km,parent_code"
# ស្រី typed as ស + ី + ្ + រ: the same on screen, another string in memory (see normalize.py).
SREI_TYPED_OUT_OF_ORDER = "\u179f\u17b8\u17d2\u179a"


def csv_body(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join((header, *rows)) + "\n").encode("utf-8")


async def post_csv(client: httpx.AsyncClient, body: bytes, **params) -> httpx.Response:
    return await client.post("/locations/import", content=body, params=params, headers={"Content-Type": "text/csv"})


async def key_client(stack, admin: httpx.AsyncClient, scopes: list[str], national: bool = False) -> httpx.AsyncClient:
    created = await admin.post("/admin/api-keys", json={
        "name": unique("key"), "organization_id": GDY_ORGANIZATION_ID, "scopes": scopes, "national": national})
    assert created.status_code == 201, created.text
    return httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {created.json()['key']}"}, timeout=30)


async def test_provinces_are_seeded_and_pages_follow_code_order(admin: httpx.AsyncClient):
    provinces = await walk(admin, "/locations", level="province", limit=7)
    assert [p["code"] for p in provinces] == [f"{n:02d}" for n in range(1, 26)]
    phnom_penh = await admin.get("/locations/12")
    assert phnom_penh.status_code == 200
    assert phnom_penh.json() | {"created_at": None, "updated_at": None} == {
        "code": "12", "level": "province", "name_en": "Phnom Penh", "name_km": "ភ្នំពេញ", "parent_code": None,
        "created_at": None, "updated_at": None}

    missing = await admin.get("/locations/99")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert (await admin.get("/locations", params={"limit": 501})).status_code == 422
    assert (await admin.get("/locations", params={"level": "region"})).status_code == 422
    assert (await admin.get("/locations", params={"cursor": "not-a-cursor!"})).status_code == 422


async def test_search_matches_either_script_and_any_syllable_order(admin: httpx.AsyncClient):
    district = await fresh_district(admin)
    name_en = f"Srei Santhor {unique('d')}"
    imported = await post_csv(admin, csv_body(f"{district},district,{name_en},ស្រីសន្ធរ,{district[:2]}"))
    assert imported.status_code == 200, imported.text
    assert imported.json()["created"] == 1

    by_khmer = await walk(admin, "/locations", q=SREI_TYPED_OUT_OF_ORDER + "សន្ធរ", parent=district[:2])
    assert [loc["code"] for loc in by_khmer] == [district]
    by_latin = await walk(admin, "/locations", q=name_en.upper())
    assert [loc["code"] for loc in by_latin] == [district]
    seeded = await walk(admin, "/locations", q="ភ្នំ ពេញ", level="province")
    assert [loc["code"] for loc in seeded] == ["12"]
    assert (await admin.get("/locations", params={"q": "?!"})).status_code == 422


async def test_import_creates_then_ignores_then_updates_and_publishes(admin: httpx.AsyncClient, broker):
    district = await fresh_district(admin)
    commune, village = f"{district}01", f"{district}0101"
    rows = [
        f"{district},district,District {district},,{district[:2]}",
        f"{commune},commune,Commune {commune},ឃុំ,{district}",
        f"{village},village,Village {village},ភូមិ,{commune}",
        # Parent neither stored nor in the file: district 0000 can never exist (there is no province 00).
        f"{district}02,commune,Orphan,,0000",
        f"{district}03,province,Wrong level,,{district}",
    ]
    first = await post_csv(admin, csv_body(*rows))
    assert first.status_code == 200, first.text
    summary = first.json()
    assert (summary["created"], summary["updated"], summary["ignored"], summary["errors"]) == (3, 0, 0, 2)
    by_row = {item["index"]: item for item in summary["items"]}
    assert [by_row[n]["status"] for n in range(2, 7)] == ["created", "created", "created", "error", "error"]
    assert by_row[5]["errors"][0]["loc"] == ["parent_code"]
    assert by_row[6]["errors"][0]["loc"] == ["level"]
    assert (await admin.get(f"/locations/{village}")).json()["parent_code"] == commune
    children = await walk(admin, "/locations", parent=district)
    assert [c["code"] for c in children] == [commune]

    again = (await post_csv(admin, csv_body(*rows))).json()
    assert (again["created"], again["updated"], again["ignored"], again["errors"]) == (0, 0, 3, 2)

    renamed = (await post_csv(admin, csv_body(f"{village},village,Village renamed,,{commune}"))).json()
    assert (renamed["created"], renamed["updated"], renamed["ignored"]) == (0, 1, 0)
    stored = (await admin.get(f"/locations/{village}")).json()
    assert (stored["name_en"], stored["name_km"]) == ("Village renamed", "ភូមិ")  # a blank cell keeps the name

    [created_event] = await find_events(broker.bootstrap, "vmc.registry.v1", lambda e: e["type"] == "vmc.locations.imported"
                                        and any(loc["code"] == district for loc in e["data"]["locations"]))
    assert created_event["data"]["locations"] == [
        {"code": district, "level": "district", "parent_code": district[:2]},
        {"code": commune, "level": "commune", "parent_code": district},
        {"code": village, "level": "village", "parent_code": commune},
    ]
    assert created_event["source"] == "/registry"
    [renamed_event] = await find_events(broker.bootstrap, "vmc.registry.v1", lambda e: e["type"] == "vmc.locations.imported"
                                        and e["data"]["locations"] == [{"code": village, "level": "village", "parent_code": commune}])
    assert "name_en" not in renamed_event["data"]["locations"][0]


async def test_parents_must_come_first_and_dry_run_changes_nothing(admin: httpx.AsyncClient):
    district = await fresh_district(admin)
    commune = f"{district}01"
    child_first = (await post_csv(admin, csv_body(f"{commune},commune,C,,{district}", f"{district},district,D,,{district[:2]}"))).json()
    assert child_first["created"] == 1 and child_first["errors"] == 1
    [error] = [item for item in child_first["items"] if item["status"] == "error"]
    assert error["index"] == 2 and "row 3" in error["errors"][0]["msg"]

    other = await fresh_district(admin)
    dry = await post_csv(admin, csv_body(f"{other},district,D,,{other[:2]}", f"{other}01,commune,C,,{other}"), dry_run="true")
    assert dry.status_code == 200
    assert (dry.json()["created"], dry.json()["dry_run"]) == (2, True)
    assert (await admin.get(f"/locations/{other}")).status_code == 404
    assert (await admin.get(f"/locations/{other}01")).status_code == 404


async def test_multipart_upload_and_blank_lines(admin: httpx.AsyncClient):
    district = await fresh_district(admin)
    body = b"\xef\xbb\xbf" + csv_body("", f"{district},district,From a spreadsheet,,{district[:2]}", ",,,,")
    answer = await admin.post("/locations/import", files={"file": ("places.csv", body, "text/csv")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == [{"index": 3, "status": "created", "code": district}]

    as_field = await admin.post("/locations/import", files={"file": (None, HEADER + "\n")})  # a part without filename
    assert as_field.status_code == 422
    no_file = await admin.post("/locations/import", files={"other": ("x.csv", body, "text/csv")})
    assert no_file.status_code == 422 and no_file.json()["errors"][0]["loc"] == ["body", "file"]


@pytest.mark.parametrize(("body", "words"), [
    (csv_body("0102,district,X,,01", header="code,level,name,name_km,parent_code"), ["name"]),
    (csv_body("0102,district,X,,01", header="code,level,name_en,name_km"), ["missing", "parent_code"]),
    (csv_body("0102,district,X,,01").replace(b"X", b"Caf\xe9"), ["UTF-8", "line 2"]),
    ("code,level,name_en,name_km,parent_code\n".encode("utf-16"), ["UTF-16"]),
    (b"", ["empty"]),
])
async def test_unreadable_files_are_422_saying_why(admin: httpx.AsyncClient, body: bytes, words: list[str]):
    answer = await post_csv(admin, body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    for word in words:
        assert word in problem["detail"]


async def test_only_national_writers_import(stack, admin: httpx.AsyncClient):
    district = await fresh_district(admin)
    body = csv_body(f"{district},district,D,,{district[:2]}")
    async with await key_client(stack, admin, ["registry:read", "registry:write"]) as local:
        refused = await post_csv(local, body)
        assert refused.status_code == 403 and "national" in refused.json()["detail"]
        assert (await local.get("/locations/12")).status_code == 200
    async with await key_client(stack, admin, ["registry:read"], national=True) as reader:
        assert (await post_csv(reader, body)).status_code == 403
    assert (await admin.get(f"/locations/{district}")).status_code == 404
    as_json = await admin.post("/locations/import", json={"code": district})
    assert as_json.status_code == 415


async def test_large_import_is_published_in_chunks_of_at_most_1000(admin: httpx.AsyncClient, broker):
    district = await fresh_district(admin)
    rows = [f"{district},district,D,,{district[:2]}"]
    for c in range(1, 12):
        commune = f"{district}{c:02d}"
        rows.append(f"{commune},commune,C{c},,{district}")
        rows += [f"{commune}{v:02d},village,V{v},,{commune}" for v in range(1, 100)]
    answer = await post_csv(admin, csv_body(*rows))
    assert answer.status_code == 200
    assert (answer.json()["created"], answer.json()["errors"]) == (len(rows), 0)

    events = await find_events(broker.bootstrap, "vmc.registry.v1", lambda e: e["type"] == "vmc.locations.imported"
                               and e["data"]["locations"][0]["code"].startswith(district), count=2)
    sizes = sorted(len(e["data"]["locations"]) for e in events)
    assert sizes == [len(rows) - 1000, 1000]
    codes = [loc["code"] for e in events for loc in e["data"]["locations"]]
    assert sorted(codes) == sorted(row.split(",")[0] for row in rows)


async def test_concurrent_imports_of_one_file_create_each_entry_once(admin: httpx.AsyncClient):
    district = await fresh_district(admin)
    body = csv_body(f"{district},district,D,,{district[:2]}", *(f"{district}{c:02d},commune,C{c},,{district}" for c in range(1, 41)))
    answers = await asyncio.gather(*(post_csv(admin, body) for _ in range(3)))
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    assert sorted(a.json()["created"] for a in answers if a.status_code == 200)[-1] == 41
    assert sum(a.json()["created"] for a in answers if a.status_code == 200) == 41
    assert len(await walk(admin, "/locations", parent=district)) == 40
