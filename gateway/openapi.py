"""One API document: the services' OpenAPI schemas merged with the gateway's own routes.

Each service serves `/openapi.json` (no key needed); the gateway fetches them once, merges paths and
components (a component whose name two services use for different shapes is renamed
`<service>_<Name>`), declares the bearer security scheme, and documents on every operation the scope
it needs and the problem+json errors it can answer.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

import aiohttp

from gateway.routing import owner_of
from shared.caller import SCOPES
from shared.errors import PROBLEM_JSON, Problem
from shared.http import body_limit

log = logging.getLogger(__name__)

TITLE = "VMC Connect API"
VERSION = "1.0.0"
# Operations anyone may call (no key).
OPEN_OPERATIONS = {"/api/v1/openapi.json", "/api/v1/asyncapi.json", "/api/v1/docs", "/health", "/ready", "/metrics"}
_ERRORS = {
    401: "Missing, invalid, expired or revoked API key",
    403: "The API key lacks the scope this operation needs",
    404: "Not found (another organisation's object is a 404 too)",
    422: "Invalid input: `errors` lists each field and what is wrong",
    429: "Rate limit or concurrency cap of the key exceeded: see `Retry-After` and `RateLimit-*`",
    503: "The service behind this route is unavailable (retry after `Retry-After` seconds)",
    504: "The service behind this route did not answer in time",
}
_BODY_ERRORS = {400: "The body cannot be parsed (not JSON, or not UTF-8)", 415: "Unsupported media type"}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

DESCRIPTION = f"""The public API of VMC Connect, the integration backend of Cambodia's national youth
volunteer programme. Every route under `/api/v1` except this document, `/api/v1/docs` and
`/api/v1/asyncapi.json` needs an API key: `Authorization: Bearer vmc_<prefix>_<secret>`.

Scopes: {", ".join(f"`{s}`" for s in SCOPES)}. Each operation names the scope it needs
(`x-required-scopes`). Errors are `application/problem+json` (RFC 9457). Lists take `limit` (≤ 500)
and `cursor`. Creates accept an `Idempotency-Key` header. The events published on Kafka are described
by the AsyncAPI document at `/api/v1/asyncapi.json`."""


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value in renames:
                out[key] = renames[value]
            else:
                out[key] = _rewrite_refs(value, renames)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, renames) for item in node]
    return node


def _problem_response(description: str) -> dict:
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _document_operation(path: str, operation: dict) -> None:
    scopes = operation.get("x-required-scopes") or []
    if path in OPEN_OPERATIONS:
        operation["security"] = []
        return
    operation["security"] = [{"bearerAuth": []}]
    if scopes:
        line = "Required scope: " + ", ".join(f"`{s}`" for s in scopes) + "."
        description = operation.get("description") or ""
        if line not in description:
            operation["description"] = f"{description}\n\n{line}".strip()
    responses = operation.setdefault("responses", {})
    errors = dict(_ERRORS)
    if "requestBody" in operation:
        errors.update(_BODY_ERRORS)
        errors[413] = f"The body is too large (over {body_limit(path) / 2**20:g} MiB)"
    if any(str(p.get("name", "")).lower() == "idempotency-key" for p in operation.get("parameters", [])):
        errors[409] = "This Idempotency-Key was already used with another request body"
    for status, description in errors.items():
        existing = responses.get(str(status))
        if existing is None:
            responses[str(status)] = _problem_response(description)
        elif "content" not in existing or PROBLEM_JSON not in existing["content"]:
            existing.setdefault("content", {})[PROBLEM_JSON] = {"schema": {"$ref": "#/components/schemas/Problem"}}


def merge(gateway_doc: dict, service_docs: dict[str, dict]) -> dict:
    """The merged document. `service_docs` maps a service name to its OpenAPI document."""
    merged: dict[str, Any] = {
        "openapi": gateway_doc.get("openapi", "3.1.0"),
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "paths": {},
        "components": {"schemas": {}},
        "security": [{"bearerAuth": []}],
        "tags": [],
    }
    components = merged["components"]
    sources = [("gateway", gateway_doc)] + sorted(service_docs.items())
    for source, document in sources:
        document = copy.deepcopy(document)
        renames: dict[str, str] = {}
        for kind, items in document.get("components", {}).items():
            target = components.setdefault(kind, {})
            for name, value in items.items():
                if name in target and target[name] != value:
                    renames[f"#/components/{kind}/{name}"] = f"#/components/{kind}/{source}_{name}"
        document = _rewrite_refs(document, renames)
        for kind, items in document.get("components", {}).items():
            target = components[kind]
            for name, value in items.items():
                ref = f"#/components/{kind}/{name}"
                target[renames[ref].rsplit("/", 1)[1] if ref in renames else name] = value
        for path, operations in document.get("paths", {}).items():
            if source != "gateway" and owner_of(path) != source:
                continue  # not public: a service's own /health, /ready, /metrics, its internal routes
            if path in merged["paths"]:
                log.warning("path served by two sources", extra={"path": path, "source": source})
            merged["paths"].setdefault(path, {}).update(operations)
        known = {tag["name"] for tag in merged["tags"]}
        for tag in document.get("tags", []):
            if tag["name"] not in known:
                merged["tags"].append(tag)
    components["schemas"]["Problem"] = _problem_schema()
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key `vmc_<prefix>_<secret>`, made with `POST /api/v1/admin/api-keys` or `vmc keys create`",
        }
    }
    for path, operations in merged["paths"].items():
        for method, operation in operations.items():
            if method in _METHODS:
                _document_operation(path, operation)
    if not merged["tags"]:
        del merged["tags"]
    return merged


def _problem_schema() -> dict:
    schema = Problem.model_json_schema()
    schema["description"] = "An RFC 9457 problem: `type` is stable, `errors` lists field errors ({loc, msg})."
    return schema


class MergedOpenApi:
    """Fetches the services' documents and keeps the merge: for 5 minutes, or 5 s while one is missing."""

    def __init__(self, gateway_doc, upstreams: dict[str, str], retry_seconds: float = 5.0, max_age_seconds: float = 300.0):
        self._gateway_doc = gateway_doc  # a callable: the gateway app's own openapi()
        self._upstreams = upstreams
        self._retry_seconds = retry_seconds
        self._max_age_seconds = max_age_seconds  # services redeployed with new routes show up within this
        self._document: dict | None = None
        self._complete = False
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        if self._document is None:
            return False
        age = time.monotonic() - self._fetched_at
        return age < (self._max_age_seconds if self._complete else self._retry_seconds)

    async def get(self, session: aiohttp.ClientSession) -> dict:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._refresh(session)
        assert self._document is not None
        return self._document

    async def _refresh(self, session: aiohttp.ClientSession) -> None:
        names = list(self._upstreams)
        results = await asyncio.gather(*(self._fetch(session, self._upstreams[n]) for n in names))
        documents = {name: doc for name, doc in zip(names, results) if doc is not None}
        missing = sorted(set(names) - set(documents))
        merged = merge(self._gateway_doc(), documents)
        if missing:
            merged["info"]["x-missing-services"] = missing
            merged["info"]["description"] += (
                f"\n\n**Incomplete**: {', '.join(missing)} did not answer; their routes are missing here for now."
            )
            log.warning("OpenAPI document incomplete", extra={"missing": missing})
        self._document, self._complete, self._fetched_at = merged, not missing, time.monotonic()

    @staticmethod
    async def _fetch(session: aiohttp.ClientSession, base: str) -> dict | None:
        for attempt in range(3):
            try:
                async with session.get(base + "/openapi.json", timeout=aiohttp.ClientTimeout(total=5)) as response:
                    if response.status == 200:
                        return await response.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2 * (attempt + 1))
        return None
