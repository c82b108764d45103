"""Test data for volunteers, enrolments and imports: bodies, organisations with their keys, projects."""
from __future__ import annotations

import time
import uuid
import zlib
from contextlib import asynccontextmanager
from datetime import date, datetime, timezone

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.registry.settings import GDY_ORGANIZATION_ID
from shared.events import REGISTRY_TOPIC
from tests.api import assert_problem, walk  # noqa: F401 - re-exported for the volunteer tests
from tests.harness import unique

WRITER = ["registry:read", "registry:write"]
# ស្រី typed in Unicode's order and as ស + ី + ្ + រ: the same on screen, other strings in memory.
SREI = "\u179f\u17d2\u179a\u17b8"
SREI_TYPED_OUT_OF_ORDER = "\u179f\u17b8\u17d2\u179a"
KHMER_DIGITS = str.maketrans("0123456789", "០១២៣៤៥៦៧៨៩")


def years_ago(years: int, month: int = 6, day: int = 15) -> str:
    """A birth date making a person `years` - 1 or `years` old today."""
    return date(date.today().year - years, month, day).isoformat()


def unique_phone() -> str:
    """A Cambodian mobile number as people type it (trunk 0, spaces): 097 xxx xxxx."""
    digits = f"{uuid.uuid4().int % 10**7:07d}"
    return f"097 {digits[:3]} {digits[3:]}"


def e164(phone: str) -> str:
    return "+855" + phone.replace(" ", "")[1:]


def khmer_tag() -> str:
    """A unique suffix in Khmer digits, so Khmer names stay Khmer and still tell tests apart."""
    return f"{uuid.uuid4().int % 10**8:08d}".translate(KHMER_DIGITS)


def volunteer_body(**overrides) -> dict:
    """An adult volunteer with every personal field set to a unique value."""
    tag = uuid.uuid4().hex[:8]
    body = {
        "name_latin": f"Sokha Chan{tag}",
        "name_km": f"សុខា{khmer_tag()}",
        "sex": "female",
        "date_of_birth": years_ago(21),
        "phone": unique_phone(),
        "email": f"sokha.{tag}@example.org",
        "residence_province": "12",
        "education_level": "higher",
        "disability": "no",
        "consent": {"given": True, "given_at": datetime.now(timezone.utc).isoformat()},
        "external_ids": [{"system": "test-ngo", "id": unique("ext")}],
    }
    body.update(overrides)
    return body


def minor_body(**overrides) -> dict:
    """A 15- or 16-year-old: a guardian's consent is on record."""
    return volunteer_body(date_of_birth=years_ago(16), consent={
        "given": True, "guardian_name": f"Guardian {uuid.uuid4().hex[:6]}", "guardian_relation": "mother"}, **overrides)


def personal_strings(body: dict) -> list[str]:
    """What must never leave the registry in an event."""
    found = [body.get("name_latin"), body.get("name_km"), body.get("email"), body.get("consent", {}).get("guardian_name")]
    if body.get("phone"):
        found += [body["phone"], e164(body["phone"])[4:]]  # the number with or without its country code
    return [s for s in found if s]


async def register(client: httpx.AsyncClient, **overrides) -> dict:
    answer = await client.post("/volunteers", json=volunteer_body(**overrides))
    assert answer.status_code == 201, answer.text
    return answer.json()


async def create_org(client: httpx.AsyncClient, parent_id: str = GDY_ORGANIZATION_ID) -> dict:
    answer = await client.post("/organizations", json={"name": unique("org"), "kind": "ngo", "parent_id": parent_id})
    assert answer.status_code == 201, answer.text
    return answer.json()


@asynccontextmanager
async def org_key(stack, admin: httpx.AsyncClient, organization_id: str, scopes=WRITER):
    """A client holding a fresh, non-national key of the organisation."""
    created = await admin.post("/admin/api-keys", json={"name": unique("key"), "organization_id": organization_id, "scopes": scopes})
    assert created.status_code == 201, created.text
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {created.json()['key']}"},
                                 timeout=120) as client:
        yield client


async def create_project(admin: httpx.AsyncClient, organization_id: str, **overrides) -> dict:
    """A programme (national key) and a project of `organization_id` in it, running all of 2026."""
    program = await admin.post("/programs", json={"code": f"T-{uuid.uuid4().hex[:10].upper()}", "name": unique("programme")})
    assert program.status_code == 201, program.text
    body = {"program_id": program.json()["id"], "organization_id": organization_id, "name": unique("project"),
            "focus_areas": ["climate_change"], "location_codes": ["12"], "start_date": "2026-01-01",
            "end_date": "2026-12-31", **overrides}
    project = await admin.post("/projects", json=body)
    assert project.status_code == 201, project.text
    return project.json()


async def registry_events(stack, match, count: int = 1, timeout: float = 20.0) -> list[dict]:
    """The first `count` events on vmc.registry.v1 for which `match(event)` holds, read from the start.

    No consumer group (partitions assigned by hand): nothing is committed, nothing is shared with
    other readers, and there is no group join to wait for (seconds on every fresh group).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.broker.bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: list[dict] = []
    try:
        await consumer.topics()  # metadata, so the topic's partitions are known
        consumer.assign([TopicPartition(REGISTRY_TOPIC, p) for p in consumer.partitions_for_topic(REGISTRY_TOPIC) or ()])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for record in records:
                    event = orjson.loads(record.value)
                    if match(event):
                        found.append({**event, "_raw": record.value, "_key": record.key})
    finally:
        await consumer.stop()
    assert len(found) >= count, f"found {len(found)} of {count} matching events on {REGISTRY_TOPIC} within {timeout} s"
    # Order across partitions is not defined; by event time it is the order they were made in.
    return sorted(found, key=lambda e: e["time"])[:count]


# ---- CSV imports ----------------------------------------------------------------------------------
IMPORT_HEADER = ("external_system", "external_id", "name_latin", "name_km", "sex", "date_of_birth", "phone", "email",
                 "residence_province", "residence_commune", "education_level", "disability", "consent_given",
                 "consent_given_at", "guardian_name", "guardian_relation")


def import_row(system: str, n: int, **overrides) -> dict:
    """Row `n` of a file: alternating sexes and scripts, every third a minor with a guardian,
    every fourth phone in Khmer digits."""
    minor = n % 3 == 0
    # Numbers and Khmer names of one file do not meet another file's (no duplicate pairs across tests).
    file_tag = zlib.crc32(system.encode())
    number = f"{(file_tag + n) % 10**7:07d}"
    phone = f"097 {number[:3]} {number[3:]}"
    row = {
        "external_system": system, "external_id": f"{system}-{n}", "name_latin": f"Dara {system} {n}",
        "name_km": f"ដារា{file_tag}x{n}".translate(KHMER_DIGITS).replace("x", "ក"), "sex": ("female", "Male")[n % 2],
        "date_of_birth": years_ago(16 if minor else 22, 1 + n % 12, 1 + n % 28),
        "phone": phone.translate(KHMER_DIGITS) if n % 4 == 0 else phone, "email": "",
        "residence_province": f"{1 + n % 25:02d}", "residence_commune": "", "education_level": "upper_secondary",
        "disability": "no", "consent_given": "yes", "consent_given_at": "",
        "guardian_name": f"Guardian {n}" if minor else "", "guardian_relation": "father" if minor else "",
    }
    row.update(overrides)
    return row


def csv_file(rows: list[dict], header: tuple[str, ...] = IMPORT_HEADER, *, bom: bool = True, newline: str = "\n") -> bytes:
    import csv
    import io

    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    writer.writerows([[row.get(column, "") for column in header] for row in rows])
    return ("\ufeff" if bom else "").encode() + out.getvalue().encode("utf-8")


async def post_import(client: httpx.AsyncClient, body: bytes, **params) -> httpx.Response:
    return await client.post("/volunteers/import", content=body, params=params, headers={"Content-Type": "text/csv"})
