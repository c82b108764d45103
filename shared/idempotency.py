"""`Idempotency-Key` on creates: a retry with the same key and body gets the original answer; the
same key with another body is a 409. The record is written in the create's own unit of work."""
from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from sqlalchemy import Column, Integer, LargeBinary
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel
from starlette.responses import Response

from shared.caller import Caller
from shared.db import timestamp_field
from shared.errors import ProblemError


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_records"

    key_id: str = Field(primary_key=True, max_length=64)
    route: str = Field(primary_key=True, max_length=300)
    idempotency_key: str = Field(primary_key=True, max_length=200)
    request_hash: str = Field(max_length=64)
    status_code: int = Field(sa_column=Column(Integer, nullable=False))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = timestamp_field()


TABLES = [IdempotencyRecord.__table__]


def _hash(payload: Any) -> str:
    return hashlib.sha256(orjson.dumps(jsonable_encoder(payload), option=orjson.OPT_SORT_KEYS)).hexdigest()


class Idempotency:
    """Use in a create endpoint: `return await idem.create(session, body, make, PublicModel)`. Without
    the header it just makes and presents."""

    def __init__(self, key_id: str, route: str, key: str | None):
        self.key_id, self.route, self.key = key_id, route, key
        self.request_hash = ""

    def _response(self, record: IdempotencyRecord) -> Response:
        return Response(record.body, status_code=record.status_code, media_type="application/json",
                        headers={"Idempotent-Replayed": "true"})

    async def check(self, session: AsyncSession, body: Any) -> Response | None:
        if self.key is None:
            return None
        self.request_hash = _hash(body)
        record = await session.get(IdempotencyRecord, (self.key_id, self.route, self.key))
        if record is None:
            return None
        if record.request_hash != self.request_hash:
            raise ProblemError(409, "this Idempotency-Key was already used with a different request body",
                               slug="idempotency-key-reused")
        return self._response(record)

    def _record(self, status_code: int, content: Any) -> IdempotencyRecord:
        return IdempotencyRecord(
            key_id=self.key_id, route=self.route, idempotency_key=self.key, request_hash=self.request_hash,
            status_code=status_code, body=orjson.dumps(jsonable_encoder(content)),
        )

    async def _twin_answer(self, session: AsyncSession) -> Response:
        """The answer a concurrent request with this key stored first (or a 409 if its body differed)."""
        record = await session.get(IdempotencyRecord, (self.key_id, self.route, self.key))
        if record is None or record.request_hash != self.request_hash:
            raise ProblemError(409, "this Idempotency-Key was already used with a different request body",
                               slug="idempotency-key-reused")
        return self._response(record)

    async def create(
        self,
        session: AsyncSession,
        body: Any,
        make: Callable[[], Awaitable[Any]],
        present: Callable[[Any], Any],
        status_code: int = 201,
    ) -> Any:
        """A create endpoint's work: the replay of an earlier answer, or `make()` the object, `present`
        it (a wire model class, or a function, possibly async) and remember the answer. The request's
        unit of work commits it."""
        if replay := await self.check(session, body):
            return replay
        if self.key is None:
            return await _presented(await make(), present)
        try:
            # If a concurrent twin stored its answer first, this create is undone with the record:
            # the twin's object is the one the client gets, not a second one.
            async with session.begin_nested():
                public = await _presented(await make(), present)
                await session.flush()  # the create's own conflicts are its own errors, not the twin's
                session.add(self._record(status_code, public))
                try:
                    await session.flush()
                except IntegrityError as exc:
                    raise _TwinFirst from exc
        except _TwinFirst:
            return await self._twin_answer(session)
        return public


class _TwinFirst(Exception):
    """Another request with the same key stored its record while this one was making the object."""


async def _presented(made: Any, present: Callable[[Any], Any]) -> Any:
    public = present.model_validate(made, from_attributes=True) if isinstance(present, type) else present(made)
    return await public if inspect.isawaitable(public) else public


async def idempotency(
    request: Request,
    caller: Caller,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> Idempotency:
    return Idempotency(caller.key_id, request.url.path, idempotency_key)


IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]
