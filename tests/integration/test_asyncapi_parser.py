"""The served AsyncAPI document passes the official AsyncAPI parser (@asyncapi/parser, run by Node.js)."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from shared.events import asyncapi_document

PROJECT = Path(__file__).resolve().parents[1] / "asyncapi"
VALIDATE = PROJECT / "validate.mjs"
PARSER = PROJECT / "node_modules" / "@asyncapi" / "parser" / "package.json"
INSTALL = "run `make test` (its asyncapi-parser step installs the parser with npm ci into tests/asyncapi/node_modules)"
BLOCKING = {"error", "warning"}

# The same on any database: run in the PostgreSQL pass only (pyproject.toml, Makefile).
pytestmark = pytest.mark.dialect_free


async def parsed(document: dict, directory: Path) -> tuple[int, list[dict]]:
    """The script's exit status and the parser's diagnostics for `document`."""
    node = shutil.which("node")
    # Failing, not skipping: a machine without Node.js would otherwise pass this check without running it.
    assert node, f"node (Node.js >= 20.17) is not on PATH: install Node.js and npm, then {INSTALL}"
    assert PARSER.is_file(), f"@asyncapi/parser is not installed: {INSTALL}"
    path = directory / "asyncapi.json"
    path.write_text(json.dumps(document, indent=1))
    process = await asyncio.create_subprocess_exec(
        node, str(VALIDATE), str(path), cwd=PROJECT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode in (0, 1), f"validate.mjs failed to run ({process.returncode}): {err.decode()}"
    return process.returncode, json.loads(out)["diagnostics"]


async def test_the_served_asyncapi_document_has_no_errors_or_warnings(stack, tmp_path):
    async with httpx.AsyncClient(base_url=stack.urls["gateway"]) as client:
        answer = await client.get("/api/v1/asyncapi.json")  # no key needed
    assert answer.status_code == 200, answer.text
    document = answer.json()
    # Consumers partition and order by the record key; the parser checks the binding's schema.
    for message in document["components"]["messages"].values():
        assert message["bindings"]["kafka"]["key"]["type"] == "string", message["name"]
    status, diagnostics = await parsed(document, tmp_path)
    blocking = [d for d in diagnostics if d["severity"] in BLOCKING]
    assert blocking == [] and status == 0, json.dumps(blocking, indent=1)


def dangling_message(document: dict) -> str:
    """Point the first channel's first message at a component that does not exist."""
    channel = next(iter(document["channels"].values()))
    channel["messages"][next(iter(channel["messages"]))] = {"$ref": "#/components/messages/missing"}
    return "invalid-ref"


def unknown_action(document: dict) -> str:
    """An operation whose action is neither send nor receive (AsyncAPI 3.0's schema allows only those)."""
    next(iter(document["operations"].values()))["action"] = "publish"
    return "asyncapi-document-resolved"


@pytest.mark.parametrize("breakage", [dangling_message, unknown_action])
async def test_the_parser_reports_a_broken_copy_as_an_error(breakage, tmp_path):
    document = asyncapi_document()
    expected = breakage(document)
    status, diagnostics = await parsed(document, tmp_path)
    assert status == 1
    assert expected in {d["code"] for d in diagnostics if d["severity"] == "error"}, diagnostics
