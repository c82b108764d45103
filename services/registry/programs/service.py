"""Rules for programmes: national keys create them, codes are unique, creation is published."""
from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.programs import repository
from services.registry.programs.models import Program, ProgramCreate
from shared.caller import CallerContext
from shared.errors import NotFound, ProblemError
from shared.events import PROGRAM_CREATED, ProgramCreated, new_event
from shared.logs import request_id_var
from shared.outbox import add_event


def _duplicate(code: str) -> ProblemError:
    return ProblemError(409, f"a programme with code {code} already exists", slug="duplicate",
                        errors=[{"loc": ["body", "code"], "msg": "already exists"}])


async def create_program(session: AsyncSession, caller: CallerContext, data: ProgramCreate) -> Program:
    if not caller.national:
        raise ProblemError(403, "programmes are created by national keys only", slug="forbidden")
    if data.name is None and data.name_km is None:
        raise ProblemError(422, "name or name_km is required", errors=[{"loc": ["body", "name"], "msg": "name or name_km is required"}])
    if await repository.by_code(session, data.code) is not None:
        raise _duplicate(data.code)
    program = Program(**data.model_dump())
    session.add(program)
    try:
        # Flushed here so that two concurrent creates of one code end in a 409, not a 500 at commit.
        await session.flush()
    except IntegrityError as exc:  # the unit of work rolls the request back
        raise _duplicate(data.code) from exc
    add_event(session, new_event(PROGRAM_CREATED, program.id, ProgramCreated(id=program.id, code=program.code),
                                 request_id_var.get()))
    return program


async def get_program(session: AsyncSession, program_id: uuid.UUID) -> Program:
    program = await repository.get(session, program_id)
    if program is None:
        raise NotFound("program")
    return program
