"""Administration routes served by the gateway itself: API keys and the audit trail."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from gateway.audit import AuditEventPublic, add_key_change, audit_page, audit_query
from gateway.keys import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, create_key
from shared.caller import CallerContext
from shared.db import utcnow
from shared.errors import PROBLEM_RESPONSES, NotFound, ProblemError
from shared.pagination import Cursor, Limit, Page, page_of, paginate
from shared.service import SessionDep
from shared.times import AwareUtcTime
from shared.unit_of_work import after_commit

router = APIRouter(prefix="/api/v1/admin", tags=["administration"], responses=PROBLEM_RESPONSES)


async def admin_caller(request: Request) -> CallerContext:
    """The authenticated admin caller, counted against its key's rate limit like any request."""
    proxy = request.app.state.proxy
    known = await proxy.authenticate(request.scope)
    request.scope.setdefault("state", {})["key_prefix"] = known.prefix
    caller = known.caller
    decision = await proxy.limiter.hit(caller.key_id, proxy.rate_limit_of(known))
    if not decision.allowed:
        proxy.metrics.rate_limited.labels("rate").inc()
        raise ProblemError(429, f"rate limit of {decision.limit} requests a minute exceeded",
                           headers={k.decode(): v.decode() for k, v in decision.headers()})
    caller.require("admin")
    return caller


admin_caller.__vmc_scope__ = "admin"  # documented as the routes' required scope (annotate_scopes)
Admin = Annotated[CallerContext, Depends(admin_caller)]


def _prefix(request: Request) -> str:
    return request.scope["state"]["key_prefix"]


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated, summary="Create an API key (shown once)")
async def create_api_key(body: ApiKeyCreate, request: Request, session: SessionDep, caller: Admin):
    if not caller.national:
        if body.national:
            raise ProblemError(403, "only a national key can create national keys")
        if body.organization_id != caller.organization_id:
            raise ProblemError(403, "an organisation's admin key creates keys for its own organisation only")
    row, key = await create_key(session, body, request.app.state.settings.internal_secret)
    add_key_change(session, caller, _prefix(request), "api_key.create", row.id, 201)
    after_commit(session, request.app.state.keys.invalidate)
    return ApiKeyCreated(**ApiKeyPublic.model_validate(row, from_attributes=True).model_dump(), key=key)


@router.get("/api-keys", response_model=Page[ApiKeyPublic], summary="List API keys (never the keys themselves)")
async def list_api_keys(session: SessionDep, caller: Admin, limit: Limit = 50, cursor: Cursor = None):
    query = select(ApiKey)
    if not caller.national:
        query = query.where(ApiKey.organization_id == caller.organization_id)
    rows = list((await session.execute(paginate(query, ApiKey, limit, cursor))).scalars())
    return page_of(rows, limit, ApiKeyPublic)


@router.delete("/api-keys/{key_id}", status_code=204, summary="Revoke an API key (takes effect at once)")
async def revoke_api_key(key_id: uuid.UUID, request: Request, session: SessionDep, caller: Admin):
    row = await session.get(ApiKey, key_id)
    if row is None or (not caller.national and row.organization_id != caller.organization_id):
        raise NotFound("API key")
    if row.revoked_at is None:
        row.revoked_at = row.updated_at = utcnow()
        add_key_change(session, caller, _prefix(request), "api_key.revoke", row.id, 204)
    # Cleared once the revocation is stored: cleared earlier, a concurrent lookup could cache the key as valid again.
    after_commit(session, request.app.state.keys.invalidate)


@router.get(
    "/audit-events",
    response_model=Page[AuditEventPublic],
    summary="The audit trail, newest first (read-only: entries are never changed or deleted)",
)
async def list_audit_events(
    session: SessionDep,
    caller: Admin,
    actor: Annotated[str | None, Query(max_length=64, description="Key id or key prefix (`cli` for the command-line tool)")] = None,
    action: Annotated[str | None, Query(max_length=60, description="e.g. `volunteer.read`; `volunteer.*` for every volunteer action")] = None,
    object: Annotated[str | None, Query(max_length=200, description="e.g. `volunteers/<id>`")] = None,  # noqa: A002 - the wire name
    from_: Annotated[AwareUtcTime | None, Query(alias="from", description="From this time (inclusive), RFC 3339")] = None,
    to: Annotated[AwareUtcTime | None, Query(description="Until this time (exclusive), RFC 3339")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
):
    """A key that is not national sees its own organisation's entries only."""
    if from_ is not None and to is not None and to <= from_:
        raise ProblemError(422, "`to` must be after `from`", errors=[{"loc": ["query", "to"], "msg": "must be after from"}])
    query = audit_query(
        organization_id=None if caller.national else caller.organization_id,
        actor=actor, action=action, object_=object, from_=from_, to=to, limit=limit, cursor=cursor,
    )
    rows = list((await session.execute(query)).scalars())
    return audit_page(rows, limit)
