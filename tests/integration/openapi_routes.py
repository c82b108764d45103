"""The public route table, read from the running services' and gateway's OpenAPI documents.

Attack tests iterate over it, so a route added later is attacked without anyone editing the tests.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable

import httpx

from tests.harness import SERVICES, Stack

API = "/api/v1"
METHODS = ("get", "post", "put", "patch", "delete")
_PARAM = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    path: str  # public template without the /api/v1 prefix, e.g. /volunteers/{volunteer_id}
    spec: dict = field(compare=False, repr=False)
    doc: dict = field(compare=False, repr=False)  # the OpenAPI document it came from ($ref resolution)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)

    @property
    def query_params(self) -> list[dict]:
        return [self.resolve(p) for p in self.spec.get("parameters", []) if self.resolve(p).get("in") == "query"]

    def query_names(self) -> set[str]:
        return {p["name"] for p in self.query_params}

    def segment_before(self, param: str) -> str:
        """The collection a path parameter names an item of: /admin/api-keys/{key_id} → api-keys."""
        parts = self.path.strip("/").split("/")
        index = parts.index("{" + param + "}")
        return parts[index - 1]

    def json_body_schema(self) -> dict | None:
        content = self.spec.get("requestBody", {}).get("content", {})
        for media, value in content.items():
            if media == "application/json" or media.endswith("+json"):
                return self.resolve(value.get("schema", {}))
        return None

    def body_media_types(self) -> list[str]:
        return list(self.spec.get("requestBody", {}).get("content", {}))

    def resolve(self, node: Any) -> Any:
        """Follow local `$ref`s (one level at a time, as often as needed)."""
        while isinstance(node, dict) and "$ref" in node:
            target: Any = self.doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = target
        return node

    def url(self, values: dict[str, str]) -> str:
        return _PARAM.sub(lambda m: str(values[m.group(1)]), self.path)


def _public_path(path: str, doc: dict) -> str | None:
    """Paths relative to /api/v1 (documents may list /api/v1/x or, with servers=[/api/v1], /x)."""
    if path.startswith(API + "/"):
        return path[len(API):]
    base = next((s.get("url", "") for s in doc.get("servers", [])), "")
    if base.rstrip("/").endswith(API):
        return path
    return None  # operations routes at the root (/health, /metrics): not part of the public API


async def documents(stack: Stack) -> dict[str, dict]:
    """Each service's own document, and the gateway's merged one when it serves it."""
    docs: dict[str, dict] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for name in SERVICES:
            answer = await client.get(stack.urls[name] + "/openapi.json")
            answer.raise_for_status()
            docs[name] = answer.json()
        merged = await client.get(stack.api + "/openapi.json")
        if merged.status_code == 200:
            docs["gateway"] = merged.json()
    return docs


async def route_table(stack: Stack) -> list[Operation]:
    """The union of every document's operations under /api/v1 (the merged one wins on duplicates)."""
    found: dict[tuple[str, str], Operation] = {}
    for doc in (await documents(stack)).values():
        for raw_path, item in doc.get("paths", {}).items():
            path = _public_path(raw_path, doc)
            if path is None or path.endswith(("/openapi.json", "/asyncapi.json", "/docs")):
                continue
            shared_params = item.get("parameters", [])
            for method in METHODS:
                if method in item:
                    spec = dict(item[method])
                    spec["parameters"] = shared_params + spec.get("parameters", [])
                    found[(method.upper(), path)] = Operation(method.upper(), path, spec, doc)
    return sorted(found.values(), key=lambda op: (op.path, op.method))


# ---- request bodies ----------------------------------------------------------------------------
Filler = Callable[[str, dict], Any]  # (property name, its schema) → a value, or MISSING to generate one
MISSING = object()


def example_body(op: Operation, fill: Filler, schema: dict | None = None) -> Any:
    """A small valid-looking body: required properties only, values from `fill` or made from the schema."""
    schema = op.resolve(schema if schema is not None else op.json_body_schema() or {})
    return _value(op, "", schema, fill)


def _value(op: Operation, name: str, schema: dict, fill: Filler) -> Any:
    schema = op.resolve(schema)
    chosen = fill(name, schema) if name else MISSING
    if chosen is not MISSING:
        return chosen
    for combinator in ("allOf", "anyOf", "oneOf"):
        if combinator in schema:
            options = [op.resolve(s) for s in schema[combinator]]
            options = [s for s in options if s.get("type") != "null"] or options
            return _value(op, name, options[0], fill) if combinator != "allOf" else _value(op, name, {k: v for s in options for k, v in s.items()}, fill)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    fmt = schema.get("format", "")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {key: _value(op, key, props[key], fill) for key in schema.get("required", []) if key in props}
    if kind == "array":
        count = schema.get("minItems", 0)
        return [_value(op, name, schema.get("items", {}), fill) for _ in range(count)]
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "number":
        return max(float(schema.get("minimum", 1)), 1.0)
    if kind == "boolean":
        return False
    if fmt == "date":
        return date.today().isoformat()
    if fmt == "date-time":
        return datetime.now(timezone.utc).isoformat()
    if fmt == "uuid":
        return str(uuid.uuid4())
    return "x" * max(int(schema.get("minLength", 1)), 4)
