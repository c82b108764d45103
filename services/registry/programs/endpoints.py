"""HTTP surface of programmes (a national catalogue: every key with registry:read sees all of them)."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from services.registry.programs import repository, service
from services.registry.programs.models import ProgramCreate, ProgramPublic
from shared.caller import Caller, require_scope
from shared.errors import PROBLEM_RESPONSES
from shared.idempotency import IdempotencyDep
from shared.pagination import Cursor, Limit, Page, page_of
from shared.service import SessionDep
from shared.times import UtcTime

router = APIRouter(prefix="/programs", tags=["programmes"], responses=PROBLEM_RESPONSES)


@router.post("", status_code=201, response_model=ProgramPublic, dependencies=[require_scope("registry:write")],
             responses={409: PROBLEM_RESPONSES[422] | {"description": "Conflict"}})
async def create_program(body: ProgramCreate, session: SessionDep, caller: Caller, idem: IdempotencyDep):
    return await idem.create(session, body, lambda: service.create_program(session, caller, body), ProgramPublic)


@router.get("", response_model=Page[ProgramPublic], dependencies=[require_scope("registry:read")])
async def list_programs(
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    code: Annotated[str | None, Query(max_length=20)] = None,
    updated_since: UtcTime | None = None,
):
    rows = await repository.list_page(session, limit=limit, cursor=cursor, code=code, updated_since=updated_since)
    return page_of(rows, limit, ProgramPublic)


@router.get("/{program_id}", response_model=ProgramPublic, dependencies=[require_scope("registry:read")])
async def get_program(program_id: uuid.UUID, session: SessionDep):
    return await service.get_program(session, program_id)
