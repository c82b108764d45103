"""Every analytics answer a user can ask for, captured through the gateway, and the wait for settled figures.

`questions()` lists the figures endpoints cut by every `group_by` dimension alone and in a few
combinations, with `status=all` and a few filters, as JSON (the combinations also as CSV and
`?hxl=true`), the skills of both instruments and the DHIS2 export of a month, a quarter and a year.
`capture()` asks them all with one key and keeps, per question, the status, the media type and the
body with `as_of` blanked (the time of the newest event in the store: what a rebuild may legitimately
move). `settled()` says
whether every event written has reached the analytics store, following the path events take.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from services.analytics.queries import REPORTS
from shared.events import ACTIVITIES_TOPIC, REGISTRY_TOPIC
from tests.conftest import eventually
from tests.integration.programme_history import History, bounded

FORMATS = {"json": ({}, {}), "csv": ({}, {"Accept": "text/csv"}), "hxl": ({"hxl": "true"}, {})}
INSTRUMENTS = ("soft-skills-v1", "digital-literacy-v1")
DHIS2_PERIODS = ("202603", "2026Q2", "2026")
AS_OF = re.compile(rb'"as_of"\s*:\s*(null|"[^"]*")')


@dataclass(frozen=True)
class Question:
    name: str  # how a difference is reported
    path: str
    params: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...] = ()


def _cuts(history: History) -> list[tuple[str, dict]]:
    """(report, params): every report plain, by every dimension alone, with status=all, filtered."""
    a = history.units["A"]
    asked: list[tuple[str, dict]] = []
    for report in ("overview", "hours", "volunteers", "beneficiaries"):
        asked += [(report, {})] + [(report, {"group_by": d}) for d in REPORTS[report].dimensions]
        asked += [(report, {"status": "all"}), (report, {"group_by": "sex,age_band", "province": "12"}),
                  (report, {"group_by": "organization", "program": history.program_codes[0]})]
    for instrument in INSTRUMENTS:
        asked += [("skills", {"instrument": instrument})]
        asked += [("skills", {"instrument": instrument, "group_by": d}) for d in REPORTS["skills"].dimensions]
    return asked + [
        ("hours", {"group_by": "day", "month": "2026-04,2026-05"}),
        ("hours", {"group_by": "age_band", "age_band": "10-14,15-17", "quarter": "2026-Q2"}),
        ("hours", {"group_by": "sex", "district": "1201,1701"}),
        ("volunteers", {"group_by": "sex", "week": "2026-W12", "province": "12"}),
        ("volunteers", {"group_by": "project", "organization": a.org["id"]}),
        ("beneficiaries", {"group_by": "activity_type", "sex": "female", "year": "2026"}),
    ]


def _combinations(history: History) -> list[tuple[str, dict]]:
    """(report, params): several dimensions at once, where complementary suppression acts; also asked as CSV
    and HXL (the other cuts are asked as JSON only: a CSV renders the same rows, so it adds little)."""
    return [
        ("hours", {"group_by": "province,month"}), ("hours", {"group_by": "province,month", "status": "all"}),
        ("volunteers", {"group_by": "province,sex,age_band"}), ("hours", {"group_by": "activity_type,quarter"}),
        ("overview", {"group_by": "province,program"}), ("overview", {"group_by": "organization,focus_area,year"}),
        ("beneficiaries", {"group_by": "sex,age_band,month", "status": "all"}),
        ("hours", {"group_by": "district,week", "from": "2026-03-01", "to": "2026-06-30"}),
        ("hours", {"group_by": "project,sex", "status": "all", "project": history.units["A1"].project["id"]}),
        *(("skills", {"instrument": i, "group_by": "program,hours_band"}) for i in INSTRUMENTS),
        ("skills", {"instrument": INSTRUMENTS[0], "group_by": "hours_band,sex", "province": "12"}),
    ]


def questions(history: History) -> list[Question]:
    """The cuts as JSON, the combinations in every format, the DHIS2 export of a few periods."""
    asked = [_question(report, params, "json") for report, params in _cuts(history)]
    asked += [_question(report, params, form) for report, params in _combinations(history) for form in FORMATS]
    for period in DHIS2_PERIODS:
        asked.append(Question(f"json /analytics/export/dhis2?period={period}", "/analytics/export/dhis2",
                              (("period", period),)))
    return asked


def _question(report: str, params: dict, form: str) -> Question:
    extra, headers = FORMATS[form]
    query = tuple(sorted({**params, **extra}.items()))
    return Question(f"{form} /analytics/{report}?{_query(query)}", f"/analytics/{report}", query,
                    tuple(headers.items()))


def _query(params: tuple[tuple[str, str], ...]) -> str:
    return "&".join(f"{k}={v}" for k, v in params)


@dataclass(frozen=True)
class Answer:
    status: int
    media_type: str
    body: bytes  # `as_of` blanked


async def ask(client: httpx.AsyncClient, question: Question) -> Answer:
    answer = await client.get(question.path, params=question.params, headers=dict(question.headers))
    return Answer(answer.status_code, answer.headers.get("content-type", ""), AS_OF.sub(b'"as_of":"-"', answer.content))


async def capture(client: httpx.AsyncClient, asked: list[Question]) -> dict[str, Answer]:
    """Every question's answer, by name (a few at a time: the gateway and analytics share two cores)."""
    answers = await bounded([ask(client, q) for q in asked], limit=4)
    return {q.name: a for q, a in zip(asked, answers)}


def differences(before: dict[str, Answer], after: dict[str, Answer], shown: int = 5) -> list[str]:
    """The questions answered differently, the first `shown` with a diff of their rows, then the others' names."""
    changed = [name for name in before if before[name] != after.get(name)]
    lines = [f"{len(changed)} of {len(before)} answers differ"]
    for name in changed[:shown]:
        old, new = before[name], after.get(name, Answer(0, "", b""))
        lines.append(f"--- {name}: status {old.status} -> {new.status}, {old.media_type} -> {new.media_type}")
        lines += list(difflib.unified_diff(_rows(old), _rows(new), "live", "rebuilt", n=0, lineterm=""))[2:]
    return lines + [f"also: {name}" for name in changed[shown:]]


def _rows(answer: Answer) -> list[str]:
    """An answer a row a line: JSON rows (and the other top-level keys) one by one, CSV as its lines."""
    if not answer.media_type.startswith("application/json"):
        return answer.body.decode(errors="replace").splitlines()
    body = orjson.loads(answer.body)
    rows = body.pop("rows", None) or body.pop("dataValues", None) or []
    return [orjson.dumps(body).decode()] + [orjson.dumps(row).decode() for row in rows]


# ---- settled: every event written has reached the analytics store ------------------------------------------
async def _log_ends(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    """Each partition's high watermark, as a fetch reports it (Tansu answers ListOffsets(LATEST) wrongly)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = {}
        while len(ends) < len(partitions):
            await consumer.getmany(timeout_ms=200, max_records=10_000)
            ends.update({tp: consumer.highwater(tp) for tp in partitions if consumer.highwater(tp) is not None})
        return ends
    finally:
        await consumer.stop()


async def _committed(bootstrap: str, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The group's committed offsets (0 where nothing is committed), read without joining the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=group)
    await consumer.start()
    try:
        return {tp: (await consumer.committed(tp)) or 0 for tp in partitions}
    finally:
        await consumer.stop()


async def _caught_up(bootstrap: str, group: str, topics: list[str]) -> bool:
    ends = await _log_ends(bootstrap, topics)
    return await _committed(bootstrap, group, list(ends)) == ends


async def _gauge_is_zero(client: httpx.AsyncClient, name: str) -> bool:
    """Whether the service's /metrics shows the gauge `name` once, at 0."""
    text = (await client.get("/metrics")).text
    return [s.value for f in text_string_to_metric_families(text) if f.name == name for s in f.samples] == [0.0]


async def _outbox_empty(client: httpx.AsyncClient) -> bool:
    return await _gauge_is_zero(client, "vmc_outbox_backlog")


async def settled(bootstrap: str, direct: dict[str, httpx.AsyncClient]) -> bool:
    """Whether every event has reached analytics, checked in the order events travel: the registry's
    outbox is empty, the activities service has consumed the registry's log (a merge makes it publish
    reassignments), its outbox is empty, analytics' group has consumed both logs (its offsets are
    committed after the store's transaction), and the upkeep has taken every stored row into the derived
    tables (answers read from those lag the activity rows until then)."""
    return (await _outbox_empty(direct["registry"])
            and await _caught_up(bootstrap, "activities-registry", [REGISTRY_TOPIC])
            and await _outbox_empty(direct["activities"])
            and await _caught_up(bootstrap, "analytics", [REGISTRY_TOPIC, ACTIVITIES_TOPIC])
            and await _gauge_is_zero(direct["analytics"], "vmc_analytics_upkeep_pending_rows"))


async def wait_settled(stack, timeout: float = 60) -> dict:
    """Wait until every event written has reached analytics (`settled`) on `stack` (tests/harness.py's Stack);
    analytics' /ready body then."""
    clients = {name: httpx.AsyncClient(base_url=stack.urls[name], timeout=30)
               for name in ("registry", "activities", "analytics")}
    try:
        await eventually(lambda: settled(stack.broker.bootstrap, clients), timeout, interval=0.3,
                         what="every event written applied by analytics")
        return (await clients["analytics"].get("/ready")).json()
    finally:
        for client in clients.values():
            await client.aclose()
