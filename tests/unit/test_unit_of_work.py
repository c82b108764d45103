"""The unit of work: a request or a consumed batch stores all of its writes with one commit, or none."""
from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, delete, event, func, insert, select
from sqlmodel import SQLModel
from starlette.responses import Response

from shared.consumer import EventConsumer, ProcessedEvent
from shared.db import make_engine, make_sessionmaker
from shared.errors import ProblemError, install_error_handlers
from shared.events import PROGRAM_CREATED, ProgramCreated, new_event
from shared.idempotency import Idempotency, IdempotencyRecord, _hash
from shared.metrics import Metrics
from shared.outbox import OutboxRecord, OutboxRelay, add_event
from shared.service import SessionDep, shared_tables
from shared.unit_of_work import after_commit, unit_of_work
from tests.harness import Databases, database_mode, new_workdir, remove_workdir

metadata = MetaData()
parents = Table("uow_parent", metadata, Column("id", Integer, primary_key=True))
# A deferred foreign key is checked by COMMIT itself: the way to make the unit of work's commit fail.
notes = Table(
    "uow_note", metadata,
    Column("id", Integer, primary_key=True),
    Column("text", String(100), nullable=False),
    Column("parent_id", Integer, ForeignKey("uow_parent.id", deferrable=True, initially="DEFERRED"), nullable=True),
)
MISSING_PARENT = 999_999

# SQLite always; PostgreSQL too when this run's database is PostgreSQL.
MODES = ["sqlite"] + (["postgresql"] if database_mode() == "postgresql" else [])


@asynccontextmanager
async def database(mode: str):
    """A fresh database of `mode` with the platform tables and this module's, dropped afterwards."""
    workdir = new_workdir()
    databases = Databases(workdir, mode)
    engine = make_engine(databases.url("unit_of_work"))
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: SQLModel.metadata.create_all(sync, tables=shared_tables()))
        await conn.run_sync(metadata.create_all)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()
        databases.drop()
        remove_workdir(workdir)


@pytest.fixture(scope="module", params=MODES)
async def maker(request):
    async with database(request.param) as made:
        yield made


@pytest.fixture(scope="module")
async def pg_maker():
    """PostgreSQL only: for races that need two connections writing at once (SQLite has one)."""
    async with database("postgresql") as made:
        yield made


@asynccontextmanager
async def emptied(maker):
    """The database emptied before a test; `.commits` counts whole-transaction commits."""
    async with maker() as session:
        for table in (notes, parents, OutboxRecord.__table__, ProcessedEvent.__table__, IdempotencyRecord.__table__):
            await session.execute(delete(table))
        await session.commit()
    commits: list[int] = []
    session_class = maker.kw["sync_session_class"]

    def count(session):
        if not session.in_nested_transaction():  # a released savepoint fires after_commit too
            commits.append(1)

    event.listen(session_class, "after_commit", count)
    try:
        yield SimpleNamespace(maker=maker, commits=commits)
    finally:
        event.remove(session_class, "after_commit", count)


@pytest.fixture
async def db(maker):
    async with emptied(maker) as made:
        yield made


@pytest.fixture
async def pg_db(pg_maker):
    async with emptied(pg_maker) as made:
        yield made


async def stored(maker) -> dict:
    async with maker() as session:
        return {
            "notes": sorted((await session.execute(select(notes.c.text))).scalars()),
            "outbox": (await session.execute(select(func.count()).select_from(OutboxRecord))).scalar_one(),
            "processed": (await session.execute(select(func.count()).select_from(ProcessedEvent))).scalar_one(),
        }


def program_event():
    return new_event(PROGRAM_CREATED, uuid.uuid4(), ProgramCreated(id=uuid.uuid4(), code="UOW"))


class _Undo(Exception):
    pass


def notes_app(maker) -> FastAPI:
    app = FastAPI()
    app.state.maker = maker
    install_error_handlers(app)

    @app.post("/notes/{then}", status_code=201)
    async def write(then: str, session: SessionDep):
        await session.execute(insert(notes).values(text="first"))
        add_event(session, program_event())
        if then == "raise":
            raise ProblemError(409, "refused after a write")
        if then == "commit":
            await session.commit()  # what a newcomer might write: refused, the request fails whole
        if then == "orphan":
            await session.execute(insert(notes).values(text="orphan", parent_id=MISSING_PARENT))
        if then == "savepoint":
            try:
                async with session.begin_nested():
                    await session.execute(insert(notes).values(text="undone"))
                    raise _Undo
            except _Undo:
                pass
        if then == "event-in-savepoint":
            async with session.begin_nested():
                add_event(session, program_event())
        return {"done": then}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    # Errors are answered by the app's handlers; the test reads the answer, as a client would.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t")


NOTHING = {"notes": [], "outbox": 0, "processed": 0}
FIRST_WRITE = {"notes": ["first"], "outbox": 1, "processed": 0}


@pytest.mark.parametrize(("then", "status", "commits", "left"), [
    pytest.param("return", 201, 1, FIRST_WRITE, id="an endpoint that returns commits once, before answering"),
    pytest.param("raise", 409, 0, NOTHING, id="an error after a write stores nothing"),
    # Committed after the answer had gone out, this would be a 201 for a write that was never stored.
    pytest.param("orphan", 500, 0, NOTHING, id="a failing commit is the answer"),
    pytest.param("commit", 500, 0, NOTHING, id="an endpoint cannot commit half of its work"),
    pytest.param("savepoint", 201, 1, FIRST_WRITE, id="a savepoint undoes only its part"),
])
async def test_a_request_is_one_unit_of_work(db, then, status, commits, left):
    async with client(notes_app(db.maker)) as c:
        answer = await c.post(f"/notes/{then}")
    assert answer.status_code == status
    if status >= 400:
        assert answer.headers["content-type"] == "application/problem+json"
    assert len(db.commits) == commits
    assert await stored(db.maker) == left


async def test_an_event_staged_in_a_savepoint_wakes_the_relay_at_the_commit(db):
    relay = OutboxRelay(db.maker, producer_factory=lambda: None, metrics=Metrics("uow-test"))
    relay._wake.clear()
    async with unit_of_work(db.maker) as session:
        async with session.begin_nested():
            add_event(session, program_event())
        # Released, not committed: the relay would find nothing yet.
        assert not relay._wake.is_set()
    assert relay._wake.is_set()
    assert (await stored(db.maker))["outbox"] == 1


async def test_after_commit_callbacks_run_only_once_the_work_is_stored(db):
    calls: list[str] = []
    async with unit_of_work(db.maker) as session:
        after_commit(session, lambda: calls.append("stored"))
        await session.execute(insert(notes).values(text="kept"))
        assert calls == []
    assert calls == ["stored"]
    with pytest.raises(_Undo):
        async with unit_of_work(db.maker) as session:
            after_commit(session, lambda: calls.append("rolled back"))
            raise _Undo
    assert calls == ["stored"]


# ---- consumer runtime ----------------------------------------------------------------------------

def consumer_with(maker, handler) -> EventConsumer:
    return EventConsumer("uow-test", ["vmc.registry.v1"], {PROGRAM_CREATED: handler}, maker,
                         consumer_factory=None, producer_factory=None, metrics=Metrics("uow-test"))


def message(event) -> SimpleNamespace:
    return SimpleNamespace(value=event.to_bytes())  # the runtime reads only the value of a record


async def test_a_handler_and_its_processed_event_record_are_stored_together(db):
    async def handler(session, event, payload):
        await session.execute(insert(notes).values(text=payload.code))

    await consumer_with(db.maker, handler)._apply([message(program_event())], raise_on_error=True)
    assert await stored(db.maker) == {"notes": ["UOW"], "outbox": 0, "processed": 1}
    assert db.commits == [1]


async def test_a_handler_that_raises_leaves_no_write_and_no_processed_event(db):
    async def handler(session, event, payload):
        await session.execute(insert(notes).values(text="partial"))
        raise RuntimeError("the handler fails after a write")

    consumer = consumer_with(db.maker, handler)
    with pytest.raises(RuntimeError, match="after a write"):
        await consumer._apply([message(program_event())], raise_on_error=True)
    assert await stored(db.maker) == NOTHING


async def test_a_handler_cannot_commit(db):
    async def handler(session, event, payload):
        await session.execute(insert(notes).values(text="partial"))
        await session.commit()

    with pytest.raises(RuntimeError, match="unit of work"):
        await consumer_with(db.maker, handler)._apply([message(program_event())], raise_on_error=True)
    assert await stored(db.maker) == NOTHING


# ---- Idempotency-Key ---------------------------------------------------------------------------

@pytest.mark.skipif(database_mode() != "postgresql",
                    reason="SQLite serves one request at a time (one connection): no twin can commit in between")
@pytest.mark.parametrize("twin_body", ["same", "other"])
async def test_a_twin_that_stored_its_answer_first_undoes_this_create(pg_db, twin_body):
    db = pg_db
    body = {"text": "twin"}
    twin = IdempotencyRecord(key_id="k", route="/notes", idempotency_key="retry-1",
                             request_hash=_hash(body if twin_body == "same" else {"text": "else"}),
                             status_code=201, body=b'{"made_by":"twin"}')

    async def make():
        # The twin commits its answer while this request is making its own object.
        async with db.maker() as other:
            other.add(twin)
            await other.commit()
        await session.execute(insert(notes).values(text="made twice"))
        return {"made_by": "me"}

    idem = Idempotency("k", "/notes", "retry-1")
    async with unit_of_work(db.maker) as session:
        if twin_body == "same":
            answer = await idem.create(session, body, make, lambda made: made)
            assert isinstance(answer, Response) and answer.body == b'{"made_by":"twin"}'
        else:
            with pytest.raises(ProblemError) as refused:
                await idem.create(session, body, make, lambda made: made)
            assert refused.value.status == 409
    assert (await stored(db.maker))["notes"] == []
