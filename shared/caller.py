"""The caller context: who is calling, as asserted by the gateway and verifiable by every service.

The gateway authenticates the API key, then sends the services `X-VMC-Caller` (base64url JSON) and
`X-VMC-Signature` (HMAC-SHA256 of that value with the internal secret, which only the gateway and the
services hold). The context expires after a short time so a captured header cannot be replayed for
long. A request without a valid signature never reaches a service's routes (401).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated

import orjson
from fastapi import Depends, Request

from shared.errors import ProblemError
from shared.manifest import SERVICES

CALLER_HEADER = "x-vmc-caller"
SIGNATURE_HEADER = "x-vmc-signature"
CONTEXT_TTL_SECONDS = 60

# Every scope an API key may hold: each service's own (from the manifest), then the gateway's.
SCOPES = (*(scope for service in SERVICES for scope in service.scopes), "admin")
# The national body (General Department of Youth): the registry's first migration seeds it, and every
# bootstrap admin key belongs to it.
GDY_ORGANIZATION_ID = "00000000-0000-4000-8000-000000000001"


@dataclass(frozen=True)
class CallerContext:
    key_id: str
    organization_id: uuid.UUID
    scopes: frozenset[str] = field(default_factory=frozenset)
    national: bool = False

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ProblemError(403, f"this API key lacks the scope {scope!r}", slug="missing-scope")


def _sign(secret: str, value: bytes) -> str:
    return hmac.new(secret.encode(), value, hashlib.sha256).hexdigest()


def encode_caller(caller: CallerContext, secret: str, now: float | None = None) -> dict[str, str]:
    """Headers the gateway adds to a forwarded request."""
    body = orjson.dumps(
        {
            "k": caller.key_id,
            "o": str(caller.organization_id),
            "s": sorted(caller.scopes),
            "n": caller.national,
            "exp": int((now or time.time()) + CONTEXT_TTL_SECONDS),
        }
    )
    value = base64.urlsafe_b64encode(body)
    return {CALLER_HEADER: value.decode(), SIGNATURE_HEADER: _sign(secret, value)}


def decode_caller(value: str | None, signature: str | None, secret: str, now: float | None = None) -> CallerContext:
    if not value or not signature:
        raise ProblemError(401, "requests must come through the gateway", slug="unauthenticated")
    raw = value.encode()
    if not hmac.compare_digest(_sign(secret, raw), signature):
        raise ProblemError(401, "the caller context is not signed by the gateway", slug="unauthenticated")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw))
        caller = CallerContext(
            key_id=str(data["k"]),
            organization_id=uuid.UUID(data["o"]),
            scopes=frozenset(data["s"]),
            national=bool(data["n"]),
        )
        expires = int(data["exp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProblemError(401, "malformed caller context", slug="unauthenticated") from exc
    if expires < (now or time.time()):
        raise ProblemError(401, "the caller context has expired", slug="unauthenticated")
    return caller


async def current_caller(request: Request) -> CallerContext:
    caller = getattr(request.state, "caller", None)
    if caller is None:
        secret = request.app.state.settings.internal_secret
        caller = decode_caller(request.headers.get(CALLER_HEADER), request.headers.get(SIGNATURE_HEADER), secret)
        request.state.caller = caller
    return caller


Caller = Annotated[CallerContext, Depends(current_caller)]


def require_scope(scope: str):
    """Dependency: the caller, after checking it holds `scope`."""

    async def _dep(caller: Caller) -> CallerContext:
        caller.require(scope)
        return caller

    _dep.__name__ = f"require_{scope.replace(':', '_')}"
    _dep.__vmc_scope__ = scope  # read by annotate_scopes to document the route's scope
    return Depends(_dep)


def route_scopes(dependant) -> list[str]:
    """Scopes required by a route: every `require_scope` among its dependencies, however deep."""
    found = []
    for sub in dependant.dependencies:
        scope = getattr(sub.call, "__vmc_scope__", None)
        if scope is not None:
            found.append(scope)
        found.extend(route_scopes(sub))
    return sorted(set(found))


def annotate_scopes(app) -> None:
    """Write each route's required scopes into its OpenAPI operation (`x-required-scopes`), since
    FastAPI does not document what a dependency checks. Call after the routers are included."""
    from fastapi import routing

    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        contexts = routing.iter_route_contexts(app.routes) if hasattr(routing, "iter_route_contexts") else app.routes
        for context in contexts:
            route = getattr(context, "original_route", context)
            if not isinstance(route, routing.APIRoute):
                continue
            scopes = route_scopes(route.dependant)
            operations = schema.get("paths", {}).get(getattr(context, "path", route.path), {})
            for method in route.methods or ():
                operation = operations.get(method.lower())
                if scopes and operation is not None:
                    operation["x-required-scopes"] = scopes
        return schema

    app.openapi = openapi
