"""CSV import of volunteers through the gateway: summary per row, re-sending changes nothing, dry runs, bad files."""
from __future__ import annotations

import time
import unicodedata
import uuid

import httpx
import pytest

from tests.harness import unique
from tests.integration.volunteer_factories import (
    IMPORT_HEADER, assert_problem, create_org, csv_file, import_row, org_key, post_import, register,
    registry_events, walk, years_ago,
)

ROWS = 2_000
# Row position in the file (0-based, the header excluded) → (change, column that is wrong).
BAD_ROWS = {
    10: ({"sex": "f"}, "sex"),
    20: ({"date_of_birth": "2005-02-30"}, "date_of_birth"),
    30: ({"residence_province": "99"}, "residence_province"),
    40: ({"date_of_birth": years_ago(16), "guardian_name": "", "guardian_relation": ""}, "guardian_name"),
    50: ({"phone": "12 34"}, "phone"),
    70: ({"name_latin": "", "name_km": ""}, "name_latin"),
    80: ({"residence_commune": "019999"}, "residence_commune"),
    90: ({"consent_given": "maybe"}, "consent_given"),
    100: ({"name_latin": "N" * 201}, "name_latin"),
    110: ({"date_of_birth": years_ago(8)}, "date_of_birth"),
}
REPEATED_ID = (60, 5)  # row 60 repeats row 5's external id


def spreadsheet_row(position: int) -> int:
    return position + 2  # the header is row 1


def the_file(system: str) -> list[dict]:
    rows = [import_row(system, n) for n in range(ROWS)]
    for position, (change, _) in BAD_ROWS.items():
        rows[position].update(change)
    rows[REPEATED_ID[0]]["external_id"] = rows[REPEATED_ID[1]]["external_id"]
    return rows


async def test_an_import_takes_valid_rows_reports_bad_ones_and_a_resend_changes_nothing(admin: httpx.AsyncClient, stack):
    system = unique("import")
    rows = the_file(system)
    started = time.perf_counter()
    answer = await post_import(admin, csv_file(rows))
    took = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    bad = len(BAD_ROWS) + 1
    assert (summary["created"], summary["updated"], summary["ignored"], summary["errors"]) == (ROWS - bad, 0, 0, bad)
    assert [item["index"] for item in summary["items"]] == [spreadsheet_row(p) for p in range(ROWS)]
    errors = {item["index"]: item["errors"] for item in summary["items"] if item["status"] == "error"}
    expected = {spreadsheet_row(p): column for p, (_, column) in BAD_ROWS.items()}
    expected[spreadsheet_row(REPEATED_ID[0])] = "external_id"
    assert errors.keys() == expected.keys()
    assert not [row for row, column in expected.items() if [column] not in [e["loc"] for e in errors[row]]]
    assert str(spreadsheet_row(REPEATED_ID[1])) in errors[spreadsheet_row(REPEATED_ID[0])][0]["msg"]
    print(f"\n{ROWS} rows imported in {took:.2f} s ({ROWS / took:.0f} rows/s)")

    stored = await walk(admin, "/volunteers", external_system=system)
    assert len(stored) == ROWS - bad
    by_external = {v["external_ids"][0]["id"]: v for v in stored}
    twelfth = by_external[f"{system}-12"]  # phone typed in Khmer digits, a minor with a guardian
    assert twelfth["phone"].startswith("+85597") and twelfth["consent"]["guardian_name"] == "Guardian 12"
    assert twelfth["name_km"] == unicodedata.normalize("NFC", rows[12]["name_km"]) and twelfth["sex"] == "female"
    assert by_external[f"{system}-1"]["sex"] == "male"  # "Male" in the file

    again = (await post_import(admin, csv_file(rows))).json()
    assert (again["created"], again["updated"], again["ignored"], again["errors"]) == (0, 0, ROWS - bad, bad)

    for n in (1, 2, 3):
        rows[n]["education_level"] = "higher"
    rows[7]["email"] = "dara7@example.org"
    changed = (await post_import(admin, csv_file(rows))).json()
    assert (changed["created"], changed["updated"], changed["ignored"]) == (0, 4, ROWS - bad - 4)
    assert {i["index"] for i in changed["items"] if i["status"] == "updated"} == {spreadsheet_row(n) for n in (1, 2, 3, 7)}
    assert len(await walk(admin, "/volunteers", external_system=system)) == ROWS - bad
    updated = (await admin.get(f"/volunteers/{by_external[f'{system}-2']['id']}")).json()
    assert updated["education_level"] == "higher"
    events = await registry_events(stack, lambda e: e["subject"] == updated["id"], count=2)
    assert [e["type"] for e in events] == ["vmc.volunteer.registered", "vmc.volunteer.updated"]
    assert not [e for e in events if b"Dara" in e["_raw"] or "ដារា".encode() in e["_raw"]]


async def test_a_dry_run_answers_the_same_summary_and_changes_nothing(admin: httpx.AsyncClient):
    system = unique("dry")
    rows = [import_row(system, n) for n in range(30)]
    rows[3]["sex"] = "unknown"
    dry = await post_import(admin, csv_file(rows), dry_run="true")
    assert dry.status_code == 200, dry.text
    summary = dry.json()
    assert summary["dry_run"] is True and (summary["created"], summary["errors"]) == (29, 1)
    assert await walk(admin, "/volunteers", external_system=system) == []
    real = (await post_import(admin, csv_file(rows))).json()
    assert (real["created"], real["errors"]) == (29, 1) and real["dry_run"] is False
    assert len(await walk(admin, "/volunteers", external_system=system)) == 29


def _raw(text: str) -> bytes:
    return text.encode("utf-8")


WHOLE_FILE_PROBLEMS = {
    "unknown column": csv_file([{}], header=(*IMPORT_HEADER, "nickname")),
    "server-owned column": csv_file([{}], header=(*IMPORT_HEADER, "id")),
    "missing column": csv_file([{}], header=tuple(c for c in IMPORT_HEADER if c != "date_of_birth")),
    "no name column": csv_file([{}], header=tuple(c for c in IMPORT_HEADER if not c.startswith("name_"))),
    "repeated column": csv_file([{}], header=(*IMPORT_HEADER, "sex")),
    "broken UTF-8": ",".join(IMPORT_HEADER).encode() + b"\nimp,1,Sok\xe1,\xff\xfe\n",
    "Windows-1252 text": ",".join(IMPORT_HEADER).encode() + "\nimp,1,Sokh\u00e1,,female\n".encode("cp1252"),
    "unclosed quote": _raw(",".join(IMPORT_HEADER) + '\nimp,1,"Sokha,,female\n'),
    "empty file": b"",
}


@pytest.mark.parametrize("what", list(WHOLE_FILE_PROBLEMS))
async def test_a_bad_file_is_a_422_for_the_whole_file_and_changes_nothing(admin: httpx.AsyncClient, what: str):
    system = unique("badfile")
    body = WHOLE_FILE_PROBLEMS[what]
    if what not in ("broken UTF-8", "Windows-1252 text", "unclosed quote", "empty file"):
        # A valid row before the problem shows that nothing is taken from a rejected file.
        body = body + csv_file([import_row(system, 1)], header=IMPORT_HEADER, bom=False).split(b"\n", 1)[1]
    problem = assert_problem(await post_import(admin, body), 422)
    assert problem["errors"] and problem["detail"]
    assert await walk(admin, "/volunteers", external_system=system) == []


async def test_multipart_upload_without_bom_and_with_crlf_and_a_415_for_json(admin: httpx.AsyncClient):
    system = unique("multipart")
    body = csv_file([import_row(system, n) for n in range(3)], bom=False, newline="\r\n")
    answer = await admin.post("/volunteers/import", files={"file": ("volunteers.csv", body, "text/csv")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["created"] == 3
    assert_problem(await admin.post("/volunteers/import", files={"other": ("v.csv", body, "text/csv")}), 422)
    assert_problem(await admin.post("/volunteers/import", json={"rows": []}), 415)


async def test_rows_without_external_ids_are_not_registered_twice(admin: httpx.AsyncClient):
    system = unique("noext")
    header = tuple(c for c in IMPORT_HEADER if not c.startswith("external_"))
    rows = [import_row(system, n) for n in range(5)]
    rows.append(dict(rows[0]))  # the same person twice in one file
    first = (await post_import(admin, csv_file(rows, header=header))).json()
    assert (first["created"], first["ignored"]) == (5, 1)
    assert first["items"][5]["status"] == "duplicate" and first["items"][5]["id"] == first["items"][0]["id"]
    again = (await post_import(admin, csv_file(rows, header=header))).json()
    assert (again["created"], again["ignored"]) == (0, 6)
    assert {i["id"] for i in again["items"]} == {i["id"] for i in first["items"]}


async def test_an_organisation_key_imports_into_its_tree_only(admin: httpx.AsyncClient, stack):
    org_a, org_b = await create_org(admin), await create_org(admin)
    child = await create_org(admin, parent_id=org_a["id"])
    theirs = await register(admin, organization_id=org_b["id"])
    system = unique("orgimport")
    header = (*IMPORT_HEADER, "organization_id")
    rows = [import_row(system, 0), import_row(system, 1, organization_id=child["id"]),
            import_row(system, 2, organization_id=org_b["id"]), import_row(system, 3, organization_id=str(uuid.uuid4())),
            import_row(system, 4, external_system=theirs["external_ids"][0]["system"],
                       external_id=theirs["external_ids"][0]["id"])]
    async with org_key(stack, admin, org_a["id"]) as as_a:
        summary = (await post_import(as_a, csv_file(rows, header=header))).json()
        assert [i["status"] for i in summary["items"]] == ["created", "created", "error", "error", "error"]
        assert [i["errors"][0]["loc"] for i in summary["items"][2:]] == [["organization_id"], ["organization_id"], ["external_id"]]
        created = {v["external_ids"][0]["id"]: v["organization_id"] for v in await walk(as_a, "/volunteers", external_system=system)}
        assert created == {f"{system}-0": org_a["id"], f"{system}-1": child["id"]}
    async with org_key(stack, admin, org_a["id"], scopes=["registry:read"]) as read_only:
        assert_problem(await post_import(read_only, csv_file(rows[:1], header=header)), 403)
    untouched = (await admin.get(f"/volunteers/{theirs['id']}")).json()
    assert untouched["name_latin"] == theirs["name_latin"]
