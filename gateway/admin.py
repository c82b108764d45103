"""Administration routes served by the gateway itself: API keys."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select

from gateway.keys import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, create_key
from shared.caller import CallerContext
from shared.db import utcnow
from shared.errors import PROBLEM_RESPONSES, NotFound, ProblemError
from shared.pagination import Cursor, Limit, Page, page_of, paginate
from shared.service import SessionDep

router = APIRouter(prefix="/api/v1/admin", tags=["administration"], responses=PROBLEM_RESPONSES)


async def admin_caller(request: Request) -> CallerContext:
    caller = await request.app.state.proxy.authenticate(request.scope)
    caller.require("admin")
    return caller


Admin = Annotated[CallerContext, Depends(admin_caller)]


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated, summary="Create an API key (shown once)")
async def create_api_key(body: ApiKeyCreate, request: Request, session: SessionDep, caller: Admin):
    if not caller.national:
        if body.national:
            raise ProblemError(403, "only a national key can create national keys")
        if body.organization_id != caller.organization_id:
            raise ProblemError(403, "an organisation's admin key creates keys for its own organisation only")
    row, key = await create_key(session, body, request.app.state.settings.internal_secret)
    await session.commit()
    request.app.state.keys.invalidate()
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
        await session.commit()
    request.app.state.keys.invalidate()
