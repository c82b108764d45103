"""Import rows per second: one 50,000-row volunteer CSV through the gateway, PostgreSQL and SQLite.

`POST /volunteers/import` (Content-Type: text/csv) on a fresh stack per database; the figure is
rows / wall-clock seconds of the whole request, checked against the import summary (every row
created, none rejected).
"""
from __future__ import annotations

import secrets
import time

import httpx

from bench.payloads import volunteer_csv
from bench.stack import DATABASES, gateway_headers, running_stack, settle
from bench.stats import figure

ROWS = 50_000


def run(quick: bool = False) -> dict[str, float]:
    rows = ROWS // 10 if quick else ROWS
    figures: dict[str, float] = {}
    for database in DATABASES:
        with running_stack(database) as stack:
            body = volunteer_csv(rows, secrets.token_hex(3))
            headers = {**gateway_headers(stack), "Content-Type": "text/csv"}
            settle(stack)
            with httpx.Client(base_url=stack.api, headers=headers, timeout=900) as client:
                began = time.perf_counter()
                response = client.post("/volunteers/import", content=body)
                elapsed = time.perf_counter() - began
            if not response.is_success:
                raise RuntimeError(f"import on {database}: HTTP {response.status_code}: {response.text[:2000]}")
            summary = response.json()
            if summary.get("created") != rows or summary.get("errors"):
                problems = [item for item in summary.get("items", []) if item.get("status") == "error"][:3]
                counts = {k: summary.get(k) for k in ("created", "updated", "ignored", "errors")}
                raise RuntimeError(f"import on {database} did not create every row: {counts}; first problems: {problems}")
            figures[figure(database, "rows/s")] = round(rows / elapsed)
            figures[figure(database, "seconds")] = round(elapsed, 2)
            figures[figure(database, "MB/s")] = round(len(body) / elapsed / 1e6, 2)
    return figures
