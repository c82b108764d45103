"""A write whose transaction lost a race in the database (deadlock, serialization failure) is run again
inside the service before any 503 goes out (shared.http.LostRaceRetry), with the same body."""
from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from sqlalchemy.exc import DBAPIError

from shared.errors import LOST_RACE_HEADER, install_error_handlers
from shared.http import LostRaceRetry, RequestContextMiddleware
from shared.metrics import Metrics


class Deadlock(Exception):
    sqlstate = "40P01"


class Invalid(Exception):
    sqlstate = "23505"


def app_losing(races: int, error: type[Exception] = Deadlock) -> tuple[FastAPI, list[bytes]]:
    """An app whose POST /things loses `races` races, then answers 201 with the body it read; every
    body it read, in order."""
    app = FastAPI()
    bodies: list[bytes] = []

    @app.post("/things", status_code=201)
    async def create(request: Request) -> dict:
        bodies.append(await request.body())
        if len(bodies) <= races:
            raise DBAPIError("INSERT ...", {}, error())
        return {"run": len(bodies)}

    @app.get("/things")
    async def read() -> dict:
        raise DBAPIError("SELECT ...", {}, Deadlock())

    install_error_handlers(app)
    app.add_middleware(LostRaceRetry)
    app.add_middleware(RequestContextMiddleware, metrics=Metrics("lost-race-test"))
    return app, bodies


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


async def test_a_write_that_lost_races_is_answered_by_the_run_that_got_through():
    app, bodies = app_losing(races=2)
    async with client(app) as c:
        answer = await c.post("/things", json={"name": "x"})
    assert answer.status_code == 201 and answer.json() == {"run": 3}
    assert bodies == [b'{"name":"x"}'] * 3, "each run reads the same body"
    assert LOST_RACE_HEADER not in answer.headers


async def test_a_write_losing_every_run_gets_a_503_saying_to_retry_without_the_marker():
    app, bodies = app_losing(races=5)
    async with client(app) as c:
        answer = await c.post("/things", json={"name": "x"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["detail"] == "a concurrent change got in the way of this request; retry it"
    assert LOST_RACE_HEADER not in answer.headers
    assert len(bodies) == 3, "three runs in all"


async def test_other_database_errors_and_reads_are_not_run_again():
    app, bodies = app_losing(races=1, error=Invalid)
    async with client(app) as c:
        answer = await c.post("/things", json={"name": "x"})
        assert answer.status_code == 500 and len(bodies) == 1
        read = await c.get("/things")
    assert read.status_code == 503 and LOST_RACE_HEADER not in read.headers
