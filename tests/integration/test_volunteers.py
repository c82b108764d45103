"""Volunteers through the gateway: registration rules, search, sync, isolation, duplicates, merge, erasure, events."""
from __future__ import annotations

import uuid

import httpx
import pytest

from tests.harness import unique
from tests.integration.volunteer_factories import (
    KHMER_DIGITS, SREI, SREI_TYPED_OUT_OF_ORDER, assert_problem, create_org, create_project, khmer_tag,
    minor_body, org_key, personal_strings, register, registry_events, volunteer_body, walk, years_ago,
)


async def events_about(stack, volunteer_id: str, count: int = 1) -> list[dict]:
    return await registry_events(stack, lambda e: volunteer_id in str(e.get("data")), count=count)


# ---- registration -------------------------------------------------------------------------------
async def test_a_volunteer_is_stored_as_given_with_an_e164_phone_and_read_back(admin: httpx.AsyncClient, stack):
    body = minor_body(phone="០៩៧ ៤៤៤ ៥៥៥៥", name_km=f"ស្រីពៅ{khmer_tag()}", residence_commune=None)
    created = await admin.post("/volunteers", json=body)
    assert created.status_code == 201, created.text
    volunteer = created.json()
    assert volunteer["phone"] == "+855974445555"
    assert volunteer["name_km"] == body["name_km"] and volunteer["name_latin"] == body["name_latin"]
    assert volunteer["organization_id"] == "00000000-0000-4000-8000-000000000001"  # the caller's, by default
    assert volunteer["consent"]["guardian_relation"] == "mother" and volunteer["consent"]["given_at"]
    assert volunteer["external_ids"] == body["external_ids"]
    assert volunteer["erased"] is False and volunteer["merged_into"] is None
    fetched = await admin.get(f"/volunteers/{volunteer['id']}")
    assert fetched.status_code == 200 and fetched.json() == volunteer

    [registered] = await events_about(stack, volunteer["id"])
    assert registered["type"] == "vmc.volunteer.registered" and registered["_key"] == volunteer["id"].encode()
    assert registered["data"]["residence_province"] == "12" and registered["data"]["sex"] == "female"
    assert not [s for s in personal_strings(body) + ["+855974445555", "974445555"] if s in registered["_raw"].decode()]


BAD_INPUT = [
    ("unknown field", {"nickname": "Sok"}, ["body", "nickname"]),
    ("server-owned id", {"id": str(uuid.uuid4())}, ["body", "id"]),
    ("server-owned erased", {"erased": True}, ["body", "erased"]),
    ("server-owned created_at", {"created_at": "2026-01-01T00:00:00Z"}, ["body", "created_at"]),
    ("unknown sex", {"sex": "f"}, ["body", "sex"]),
    ("impossible date", {"date_of_birth": "2005-02-30"}, ["body", "date_of_birth"]),
    ("malformed phone", {"phone": "12-34"}, ["body", "phone"]),
    ("letters in a phone", {"phone": "012 345 67x"}, ["body", "phone"]),
    ("unknown province", {"residence_province": "99"}, ["body", "residence_province"]),
    ("Khmer digits in a code", {"residence_province": "១២"}, ["body", "residence_province"]),
    ("unknown commune", {"residence_commune": "129999"}, ["body", "residence_commune"]),
    ("over-long name", {"name_latin": "S" * 201}, ["body", "name_latin"]),
    ("no name", {"name_latin": None, "name_km": None}, ["body", "name_latin"]),
    ("a name of punctuation only", {"name_latin": "--"}, ["body", "name_latin"]),
    ("nine years old", {"date_of_birth": years_ago(9, 1, 1)}, ["body", "date_of_birth"]),
    ("born in the future", {"date_of_birth": "2999-01-01"}, ["body", "date_of_birth"]),
    ("no consent", {"consent": {"given": False}}, ["body", "consent", "given"]),
    ("consent missing", {"consent": None}, ["body", "consent"]),
    ("unknown consent field", {"consent": {"given": True, "signed": True}}, ["body", "consent", "signed"]),
    ("minor without a guardian", {"date_of_birth": years_ago(15), "consent": {"given": True}},
     ["body", "consent", "guardian_name"]),
    ("consent time in the future", {"consent": {"given": True, "given_at": "2999-01-01T00:00:00Z"}}, ["body", "consent", "given_at"]),
    ("consent time out of range", {"consent": {"given": True, "given_at": "9999-12-31T23:59:59-14:00"}},
     ["body", "consent", "given_at"]),
    ("a NUL in a name", {"name_latin": "Sok\u0000ha"}, ["body", "name_latin"]),
    ("bad email", {"email": "sokha at example.org"}, ["body", "email"]),
    ("unknown education level", {"education_level": "phd"}, ["body", "education_level"]),
    ("unknown organisation", {"organization_id": str(uuid.uuid4())}, ["body", "organization_id"]),
    ("same external id twice", {"external_ids": [{"system": "s", "id": "1"}, {"system": "s", "id": "1"}]},
     ["body", "external_ids"]),
]


@pytest.mark.parametrize(("what", "change", "loc"), BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
async def test_bad_input_is_a_422_naming_the_field(admin: httpx.AsyncClient, what: str, change: dict, loc: list):
    body = volunteer_body()
    body.update(change)
    body = {k: v for k, v in body.items() if not (k == "consent" and v is None)}
    assert_problem(await admin.post("/volunteers", json=body), 422, loc)
    assert await walk(admin, "/volunteers", external_system="test-ngo", external_id=body["external_ids"][0]["id"]) == []


async def test_an_external_id_names_one_volunteer_per_system(admin: httpx.AsyncClient):
    first = await register(admin)
    taken = first["external_ids"][0]
    problem = assert_problem(await admin.post("/volunteers", json=volunteer_body(external_ids=[taken])), 409)
    assert first["id"] in problem["detail"] and problem["existing_id"] == first["id"]
    # The same id in another system is another person's.
    other = await register(admin, external_ids=[{"system": "other-ngo", "id": taken["id"]}])
    found = await walk(admin, "/volunteers", external_system=taken["system"], external_id=taken["id"])
    assert [v["id"] for v in found] == [first["id"]] != [other["id"]]


async def test_idempotency_key_replays_a_registration(admin: httpx.AsyncClient):
    body, key = volunteer_body(), unique("idem")
    first = await admin.post("/volunteers", json=body, headers={"Idempotency-Key": key})
    again = await admin.post("/volunteers", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert_problem(await admin.post("/volunteers", json={**body, "sex": "male"}, headers={"Idempotency-Key": key}), 409)
    external = body["external_ids"][0]
    assert len(await walk(admin, "/volunteers", external_system=external["system"], external_id=external["id"])) == 1


BAD_QUERIES = [
    ({"external_system": "ngo\u0000"}, ["query", "external_system"]),
    ({"updated_since": "9999-12-31T23:59:59-14:00"}, ["query", "updated_since"]),
    ({"updated_since": "yesterday"}, ["query", "updated_since"]),
    ({"province": "១២"}, ["query", "province"]),
    ({"organization_id": "org-1"}, ["query", "organization_id"]),
    ({"limit": 0}, ["query", "limit"]),
    # A cursor holding a time without an offset (never one of ours).
    ({"cursor": "WyIyMDIwLTAxLTAxVDAwOjAwOjAwIiwiMDAwMDAwMDAtMDAwMC00MDAwLTgwMDAtMDAwMDAwMDAwMDAxIl0"}, ["query", "cursor"]),
]


@pytest.mark.parametrize(("params", "loc"), BAD_QUERIES, ids=[str(p) for p, _ in BAD_QUERIES])
async def test_bad_query_parameters_are_a_422_naming_them(admin: httpx.AsyncClient, params: dict, loc: list):
    assert_problem(await admin.get("/volunteers", params=params), 422, loc)


# ---- search, filters, pagination ----------------------------------------------------------------
async def test_search_matches_khmer_typed_in_another_order_latin_parts_and_phones(admin: httpx.AsyncClient):
    tag, latin = khmer_tag(), unique("Sreypóv")
    volunteer = await register(admin, name_km=f"{SREI}ពៅ{tag}", name_latin=f"Chan {latin}")
    for q in (f"{SREI_TYPED_OUT_OF_ORDER}ពៅ{tag}", f"ពៅ {tag}", tag, latin.upper().replace("Ó", "O")):
        found = await walk(admin, "/volunteers", q=q)
        assert [v["id"] for v in found] == [volunteer["id"]], q
    khmer_phone = "0" + volunteer["phone"][4:]
    assert [v["id"] for v in await walk(admin, "/volunteers", q=khmer_phone.translate(KHMER_DIGITS))] == [volunteer["id"]]
    assert_problem(await admin.get("/volunteers", params={"q": "--"}), 422, ["query", "q"])


async def test_pages_follow_a_cursor_and_updated_since_gives_only_later_changes(admin: httpx.AsyncClient):
    org = await create_org(admin)
    made = [await register(admin, organization_id=org["id"], residence_province=p) for p in ("12", "12", "17")]
    first = await admin.get("/volunteers", params={"organization_id": org["id"], "limit": 2})
    assert first.status_code == 200 and len(first.json()["items"]) == 2 and first.json()["next_cursor"]
    second = await admin.get("/volunteers", params={"organization_id": org["id"], "limit": 2, "cursor": first.json()["next_cursor"]})
    assert len(second.json()["items"]) == 1 and second.json()["next_cursor"] is None
    listed = [v["id"] for v in first.json()["items"] + second.json()["items"]]
    assert listed == [v["id"] for v in made]

    changed = await admin.patch(f"/volunteers/{made[0]['id']}", json={"education_level": "vocational"})
    since = changed.json()["updated_at"]
    assert [v["id"] for v in await walk(admin, "/volunteers", organization_id=org["id"], updated_since=since)] == [made[0]["id"]]
    assert [v["id"] for v in await walk(admin, "/volunteers", organization_id=org["id"], province="17")] == [made[2]["id"]]
    assert_problem(await admin.get("/volunteers", params={"limit": 501}), 422)
    assert_problem(await admin.get("/volunteers", params={"cursor": "not-a-cursor"}), 422)


async def test_project_and_programme_filters_find_enrolled_volunteers(admin: httpx.AsyncClient):
    org = await create_org(admin)
    project = await create_project(admin, org["id"])
    enrolled, other = await register(admin, organization_id=org["id"]), await register(admin, organization_id=org["id"])
    answer = await admin.post(f"/volunteers/{enrolled['id']}/enrollments", json={"project_id": project["id"], "started_on": "2026-02-01"})
    assert answer.status_code == 201, answer.text
    for name, value in (("project_id", project["id"]), ("program_id", project["program_id"])):
        assert [v["id"] for v in await walk(admin, "/volunteers", **{name: value})] == [enrolled["id"]] != [other["id"]]


# ---- changes ------------------------------------------------------------------------------------
async def test_patch_changes_only_what_is_sent_and_publishes_statistical_changes(admin: httpx.AsyncClient, stack):
    volunteer = await register(admin)
    path = f"/volunteers/{volunteer['id']}"
    answer = await admin.patch(path, json={"phone": "012 345 678", "name_latin": None})
    assert answer.status_code == 200, answer.text
    changed = answer.json()
    assert changed["phone"] == "+85512345678" and changed["name_latin"] is None
    assert {k: v for k, v in changed.items() if k not in ("phone", "name_latin", "updated_at")} == \
        {k: v for k, v in volunteer.items() if k not in ("phone", "name_latin", "updated_at")}
    assert changed["updated_at"] > volunteer["updated_at"]

    assert_problem(await admin.patch(path, json={"name_km": None}), 422, ["body", "name_latin"])
    assert_problem(await admin.patch(path, json={"sex": None}), 422, ["body", "sex"])
    assert_problem(await admin.patch(path, json={"erased": True}), 422, ["body", "erased"])
    assert_problem(await admin.patch(path, json={"nickname": "x"}), 422, ["body", "nickname"])
    assert_problem(await admin.patch(path, json={"residence_commune": "999999"}), 422, ["body", "residence_commune"])
    assert_problem(await admin.patch(path, json={"date_of_birth": years_ago(16)}), 422, ["body", "consent", "guardian_name"])

    moved = await admin.patch(path, json={"residence_province": "17", "external_ids": [{"system": "s2", "id": unique("x")}]})
    assert moved.status_code == 200 and moved.json()["residence_province"] == "17"
    assert len(moved.json()["external_ids"]) == 1 and moved.json()["external_ids"][0]["system"] == "s2"
    # The old id is free again; the new one is taken.
    reuse = await admin.post("/volunteers", json=volunteer_body(external_ids=volunteer["external_ids"]))
    assert reuse.status_code == 201, reuse.text
    assert_problem(await admin.patch(f"/volunteers/{reuse.json()['id']}", json={"external_ids": moved.json()["external_ids"]}), 409)

    registered, updated = await events_about(stack, volunteer["id"], count=2)
    assert (registered["type"], updated["type"]) == ("vmc.volunteer.registered", "vmc.volunteer.updated")
    assert updated["data"]["residence_province"] == "17"


# ---- organisation isolation and scopes ----------------------------------------------------------
async def test_another_organisations_volunteer_is_a_404_on_every_route(admin: httpx.AsyncClient, stack):
    org_a, org_b = await create_org(admin), await create_org(admin)
    theirs = await register(admin, organization_id=org_b["id"])
    project = await create_project(admin, org_a["id"])
    async with org_key(stack, admin, org_a["id"]) as as_a:
        mine = await register(as_a)
        assert mine["organization_id"] == org_a["id"]
        path = f"/volunteers/{theirs['id']}"
        for method, url, body in [
            ("GET", path, None), ("PATCH", path, {"education_level": "none"}), ("DELETE", path, None),
            ("POST", f"{path}/merge", {"duplicate_id": mine["id"]}),
            ("POST", f"/volunteers/{mine['id']}/merge", {"duplicate_id": theirs["id"]}),
            ("GET", f"{path}/enrollments", None),
            ("POST", f"{path}/enrollments", {"project_id": project["id"], "started_on": "2026-02-01"}),
        ]:
            assert_problem(await as_a.request(method, url, json=body), 404)
        assert_problem(await as_a.post("/volunteers", json=volunteer_body(organization_id=org_b["id"])), 422,
                       ["body", "organization_id"])
        listed = {v["id"] for v in await walk(as_a, "/volunteers")}
        assert mine["id"] in listed and theirs["id"] not in listed
        assert await walk(as_a, "/volunteers", organization_id=org_b["id"]) == []
    still = await admin.get(f"/volunteers/{theirs['id']}")
    assert still.json()["erased"] is False and still.json()["education_level"] == theirs["education_level"]
    async with org_key(stack, admin, org_a["id"], scopes=["registry:write"]) as write_only:
        assert_problem(await write_only.get(f"/volunteers/{mine['id']}"), 403)
        assert_problem(await write_only.get("/volunteers"), 403)
    async with org_key(stack, admin, org_a["id"], scopes=["registry:read"]) as read_only:
        assert_problem(await read_only.post("/volunteers", json=volunteer_body()), 403)


# ---- duplicates and merge -----------------------------------------------------------------------
async def test_probable_duplicates_are_listed_and_merged(admin: httpx.AsyncClient, stack):
    org = await create_org(admin)
    tag, born = khmer_tag(), years_ago(20)
    same_phone = [await register(admin, organization_id=org["id"], phone="097 100 2000"),
                  await register(admin, organization_id=org["id"], phone="+855 97 100 2000")]
    # The same Khmer name typed in two orders, born the same day, no Latin name on one of them.
    same_name = [await register(admin, organization_id=org["id"], name_km=f"{SREI}{tag}", date_of_birth=born),
                 await register(admin, organization_id=org["id"], name_km=f"{SREI_TYPED_OUT_OF_ORDER}{tag}",
                                name_latin=None, date_of_birth=born)]
    await register(admin, organization_id=org["id"], name_km=f"{SREI}{tag}", date_of_birth=years_ago(25))

    async with org_key(stack, admin, org["id"]) as as_org:
        pairs = await walk(as_org, "/volunteers/duplicates", limit=1)
    found = {frozenset(p["volunteer_ids"]): p["reasons"] for p in pairs}
    assert found == {frozenset(v["id"] for v in same_phone): ["phone"],
                     frozenset(v["id"] for v in same_name): ["name_and_birth_date"]}

    survivor, duplicate = same_name
    project = await create_project(admin, org["id"])
    enrolled = await admin.post(f"/volunteers/{duplicate['id']}/enrollments", json={"project_id": project["id"], "started_on": "2026-03-01"})
    assert enrolled.status_code == 201, enrolled.text
    merged = await admin.post(f"/volunteers/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]})
    assert merged.status_code == 200, merged.text
    assert {(e["system"], e["id"]) for e in merged.json()["external_ids"]} == \
        {(e["system"], e["id"]) for e in survivor["external_ids"] + duplicate["external_ids"]}
    enrolments = (await admin.get(f"/volunteers/{survivor['id']}/enrollments")).json()["items"]
    assert [e["id"] for e in enrolments] == [enrolled.json()["id"]] and enrolments[0]["volunteer_id"] == survivor["id"]

    gone = await admin.get(f"/volunteers/{duplicate['id']}")
    assert gone.status_code == 200 and gone.json()["merged_into"] == survivor["id"]
    listed = {v["id"] for v in await walk(admin, "/volunteers", organization_id=org["id"])}
    assert duplicate["id"] not in listed and survivor["id"] in listed
    assert frozenset(v["id"] for v in same_name) not in {frozenset(p["volunteer_ids"]) for p in await walk(admin, "/volunteers/duplicates")}
    assert_problem(await admin.patch(f"/volunteers/{duplicate['id']}", json={"sex": "male"}), 409)
    assert_problem(await admin.post(f"/volunteers/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"]}), 409)
    assert_problem(await admin.post(f"/volunteers/{survivor['id']}/merge", json={"duplicate_id": survivor["id"]}), 422)
    assert_problem(await admin.post(f"/volunteers/{survivor['id']}/merge", json={"duplicate_id": str(uuid.uuid4())}), 404)

    [event] = await registry_events(stack, lambda e: e["type"] == "vmc.volunteer.merged"
                                    and e["data"]["duplicate_id"] == duplicate["id"])
    assert event["data"]["survivor_id"] == survivor["id"]


# ---- erasure ------------------------------------------------------------------------------------
async def test_erasure_removes_identifiers_keeps_statistics_and_blocks_new_enrolments(admin: httpx.AsyncClient, stack):
    org = await create_org(admin)
    body = minor_body(organization_id=org["id"], residence_province="17")
    volunteer = (await admin.post("/volunteers", json=body)).json()
    project = await create_project(admin, org["id"])
    assert (await admin.delete(f"/volunteers/{volunteer['id']}")).status_code == 204
    erased = await admin.get(f"/volunteers/{volunteer['id']}")
    assert erased.status_code == 200
    record = erased.json()
    assert record["erased"] is True and record["external_ids"] == []
    assert [record[k] for k in ("name_latin", "name_km", "phone", "email")] == [None] * 4
    assert record["consent"]["guardian_name"] is None and record["consent"]["guardian_relation"] is None
    assert (record["sex"], record["date_of_birth"], record["residence_province"], record["organization_id"]) == \
        (body["sex"], body["date_of_birth"], "17", org["id"])
    assert not [s for s in personal_strings(body) if s in erased.text]
    assert await walk(admin, "/volunteers", q=body["name_latin"]) == []

    assert (await admin.delete(f"/volunteers/{volunteer['id']}")).status_code == 204  # idempotent
    assert_problem(await admin.post(f"/volunteers/{volunteer['id']}/enrollments",
                                    json={"project_id": project["id"], "started_on": "2026-02-01"}), 409)
    assert_problem(await admin.patch(f"/volunteers/{volunteer['id']}", json={"name_latin": "Back"}), 409)
    # Its external id is free for a new registration.
    assert (await admin.post("/volunteers", json=volunteer_body(external_ids=body["external_ids"]))).status_code == 201

    events = await events_about(stack, volunteer["id"], count=2)
    assert [e["type"] for e in events] == ["vmc.volunteer.registered", "vmc.volunteer.erased"]
    assert not [s for e in events for s in personal_strings(body) if s in e["_raw"].decode()]
