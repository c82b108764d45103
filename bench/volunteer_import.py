"""Import rows per second: one 50,000-row volunteer CSV through the gateway, PostgreSQL and SQLite.

`POST /volunteers/import` (Content-Type: text/csv) on a fresh stack per database; the figure is
rows / wall-clock seconds of the whole request, checked against the import summary (every row
created, none rejected). Below each, the machine's ceiling (bench.ceiling): as many volunteer rows and
outbox rows written raw, 1,000 a transaction, into a fresh database with the registry's migrations
(the import also writes each row's external id, which the ceiling leaves out).
"""
from __future__ import annotations

import secrets
import time

import httpx

from bench import ceiling
from bench.load import LoadResult
from bench.payloads import registered_volunteers, volunteer_csv
from bench.stack import DATABASES, gateway_headers, probed, running_stack
from bench.stats import figure
from services.registry.migrations import MIGRATIONS
from services.registry.volunteers.models import Volunteer

ROWS = 50_000
CEILING_BATCH = 1000


def run(quick: bool = False) -> dict[str, float]:
    rows = ROWS // 10 if quick else ROWS
    figures: dict[str, float] = {}
    for database in DATABASES:
        with running_stack(database) as stack:
            tag = secrets.token_hex(3)
            body = volunteer_csv(rows, tag)
            headers = {**gateway_headers(stack), "Content-Type": "text/csv"}
            (response, elapsed), probe = probed(stack, lambda: post_import(stack.api, headers, body))
            if not response.is_success:
                raise RuntimeError(f"import on {database}: HTTP {response.status_code}: {response.text[:2000]}")
            summary = response.json()
            if summary.get("created") != rows or summary.get("errors"):
                problems = [item for item in summary.get("items", []) if item.get("status") == "error"][:3]
                counts = {k: summary.get(k) for k in ("created", "updated", "ignored", "errors")}
                raise RuntimeError(f"import on {database} did not create every row: {counts}; first problems: {problems}")
            # The machine's ceiling: as many volunteer rows and outbox rows, 1,000 a transaction.
            url = ceiling.fresh_database(stack, "ceiling", MIGRATIONS)
            table, events = registered_volunteers(tag, 0, rows)
            raw, raw_probe = probed(stack, lambda: ceiling.batch_result(
                rows, ceiling.bulk(url, Volunteer.__table__, table, events, CEILING_BATCH)))
            figures |= ceiling.side_by_side(database, "rows/s", LoadResult(rows, elapsed, 0, 0.0, 0.0), probe, raw,
                                            raw_probe, ceiling.method(url, bulk=True), latencies=False)
            figures[figure(database, "seconds")] = round(elapsed, 2)
            figures[figure(database, "MB/s")] = round(len(body) / elapsed / 1e6, 2)
    return figures


def post_import(api: str, headers: dict[str, str], body: bytes) -> tuple[httpx.Response, float]:
    """The answer to one import request and the seconds it took."""
    with httpx.Client(base_url=api, headers=headers, timeout=900) as client:
        began = time.perf_counter()
        response = client.post("/volunteers/import", content=body)
        return response, time.perf_counter() - began
