"""Queries of verification and correction: activities locked for a decision, the version history."""
from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities.models import Activity
from services.activities.verification.models import ActivityVersion


async def locked(session: AsyncSession, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Activity]:
    """The activities, each held until the transaction ends (PostgreSQL): two verifiers deciding one
    entry at once take turns, and the second sees the first's decision. SQLite has one writer anyway."""
    if not ids:
        return {}
    query = select(Activity).where(Activity.id.in_(list(ids))).execution_options(populate_existing=True)
    if session.bind.dialect.name == "postgresql":
        query = query.order_by(Activity.id).with_for_update()  # in id order: two bulk requests cannot deadlock
    return {row.id: row for row in (await session.execute(query)).scalars()}


def add_version(session: AsyncSession, activity_id: uuid.UUID, version: int, state: dict[str, Any]) -> None:
    session.add(ActivityVersion(activity_id=activity_id, version=version, state=state))


async def versions(session: AsyncSession, activity_id: uuid.UUID) -> list[ActivityVersion]:
    query = select(ActivityVersion).where(ActivityVersion.activity_id == activity_id).order_by(ActivityVersion.version)
    return list((await session.execute(query)).scalars())
