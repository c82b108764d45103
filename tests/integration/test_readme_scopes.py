"""Every API operation declares the scope it needs, and the README's route → scope table is that list."""
from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from gateway.openapi import OPEN_OPERATIONS

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- scopes:begin -->", "<!-- scopes:end -->"

# The same on any database: run in the PostgreSQL pass only (pyproject.toml, Makefile).
pytestmark = pytest.mark.dialect_free


def scope_table(doc: dict) -> str:
    rows = ["| route | scopes |", "|---|---|"]
    for path in sorted(doc["paths"]):
        for method, operation in sorted(doc["paths"][path].items()):
            if not isinstance(operation, dict) or path in OPEN_OPERATIONS:
                continue
            scopes = operation.get("x-required-scopes") or []
            rows.append(f"| `{method.upper()} {path.removeprefix('/api/v1')}` | {', '.join(f'`{s}`' for s in scopes)} |")
    return "\n".join(rows)


async def test_every_operation_needs_a_scope_and_the_readme_lists_them(admin: httpx.AsyncClient):
    doc = (await admin.get("/openapi.json")).json()
    unscoped = [
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items() if path not in OPEN_OPERATIONS
        for method, operation in item.items() if isinstance(operation, dict) and not operation.get("x-required-scopes")
    ]
    assert not unscoped, f"operations without a required scope: {unscoped}"
    table = scope_table(doc)
    match = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), README.read_text(), re.S)
    assert match, f"README lacks the {BEGIN} … {END} section"
    assert match.group(1).strip() == table, "README's route → scope table is stale; replace it with:\n" + table
