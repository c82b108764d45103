"""Queries on programmes."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.programs.models import Program
from shared.pagination import paginate


async def get(session: AsyncSession, program_id: uuid.UUID) -> Program | None:
    return await session.get(Program, program_id)


async def by_code(session: AsyncSession, code: str) -> Program | None:
    return (await session.execute(select(Program).where(Program.code == code))).scalars().first()


async def list_page(
    session: AsyncSession, *, limit: int, cursor: str | None, code: str | None = None, updated_since: datetime | None = None
) -> list[Program]:
    query = select(Program)
    if code is not None:
        query = query.where(Program.code == code)
    if updated_since is not None:
        query = query.where(Program.updated_at >= updated_since)
    return list((await session.execute(paginate(query, Program, limit, cursor))).scalars())
