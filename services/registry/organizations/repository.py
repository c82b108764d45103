"""Queries on organisations, including the organisation tree used for isolation."""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.organizations.models import Organization


async def subtree_ids(session: AsyncSession, root: uuid.UUID) -> set[uuid.UUID]:
    """The organisation and every organisation below it."""
    tree = select(Organization.id).where(Organization.id == root).cte("tree", recursive=True)
    tree = tree.union_all(select(Organization.id).join(tree, Organization.parent_id == tree.c.id))
    return set((await session.execute(select(tree.c.id))).scalars())


async def get(session: AsyncSession, org_id: uuid.UUID) -> Organization | None:
    return await session.get(Organization, org_id)


async def list_page(session: AsyncSession, query):
    return list((await session.execute(query)).scalars())
