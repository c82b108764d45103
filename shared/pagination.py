"""Keyset pagination on (updated_at, id): stable under inserts, usable for incremental sync."""
from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_

from shared.errors import ProblemError
from shared.times import as_utc

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=500, description="Page size (max 500)")]
Cursor = Annotated[str | None, Query(max_length=500, description="Opaque cursor from next_cursor")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(updated_at: datetime, id_: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([updated_at.isoformat(), str(id_)])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, id_ = orjson.loads(base64.urlsafe_b64decode(padded))
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None:  # never one of ours (they are UTC); a naive time cannot be compared
            raise ValueError("cursor time without an offset")
        return as_utc(moment), uuid.UUID(id_)  # ValueError too for a time with no UTC equivalent
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ProblemError(422, "invalid cursor", errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}]) from exc


def paginate(query: Select, model: Any, limit: int, cursor: str | None) -> Select:
    """Order by (updated_at, id) and start after the cursor; fetch one extra row to know if more exist."""
    if cursor:
        stamp, id_ = decode_cursor(cursor)
        query = query.where(or_(model.updated_at > stamp, and_(model.updated_at == stamp, model.id > id_)))
    return query.order_by(model.updated_at, model.id).limit(limit + 1)


def page_of(rows: list[Any], limit: int, public: Any) -> dict:
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [public.model_validate(r, from_attributes=True) for r in rows],
        "next_cursor": encode_cursor(rows[-1].updated_at, rows[-1].id) if more and rows else None,
    }
