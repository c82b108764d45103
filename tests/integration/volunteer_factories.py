"""Test data for the volunteer tests: registry events, personal strings, CSV imports.

Bodies, entities and organisation keys come from tests/factories.py, re-exported here.
"""
from __future__ import annotations

import time
import zlib

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import REGISTRY_TOPIC
from tests.api import assert_problem, walk  # noqa: F401 - re-exported for the volunteer tests
from tests.factories import (  # noqa: F401 - re-exported for the volunteer tests
    KHMER_DIGITS, create_org, create_project, e164, khmer_tag, minor_body, org_key, register, volunteer_body,
    years_ago,
)
from tests.harness import unique

# ស្រី typed in Unicode's order and as ស + ី + ្ + រ: the same on screen, other strings in memory.
SREI = "\u179f\u17d2\u179a\u17b8"
SREI_TYPED_OUT_OF_ORDER = "\u179f\u17b8\u17d2\u179a"


def personal_strings(body: dict) -> list[str]:
    """What must never leave the registry in an event."""
    found = [body.get("name_latin"), body.get("name_km"), body.get("email"), body.get("consent", {}).get("guardian_name")]
    if body.get("phone"):
        found += [body["phone"], e164(body["phone"])[4:]]  # the number with or without its country code
    return [s for s in found if s]


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
