"""One error type rendered as RFC 9457 problem+json, and the handlers that make every failure one."""
from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from shared.logs import request_id_var

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
    406: "Not acceptable", 409: "Conflict", 413: "Payload too large", 415: "Unsupported media type",
    422: "Validation failed", 429: "Too many requests", 500: "Internal server error", 502: "Bad gateway",
    503: "Service unavailable", 504: "Gateway timeout",
}
_SLUGS = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
    406: "not-acceptable", 409: "conflict", 413: "payload-too-large", 415: "unsupported-media-type",
    422: "validation", 429: "rate-limited", 500: "internal", 502: "bad-gateway", 503: "unavailable",
    504: "timeout",
}


# PostgreSQL's deadlock detected and serialization failure: the transaction was undone because of a
# concurrent one, not because anything in it was wrong.
_LOST_RACE = frozenset({"40P01", "40001"})
# Marks the 503 of a lost race for `shared.http.LostRaceRetry`, which runs the request again (and never
# lets the header out).
LOST_RACE_HEADER = "x-vmc-lost-race"


def lost_a_race(exc: DBAPIError) -> bool:
    """Whether the database undid the statement because of a concurrent transaction (doing the same
    work again succeeds)."""
    return getattr(exc.orig, "sqlstate", None) in _LOST_RACE


# Driver errors (by class name, to stay driver-agnostic) that mean "the database is away", not "bug".
_UNAVAILABLE = {
    "TooManyConnectionsError", "CannotConnectNowError", "ConnectionDoesNotExistError", "InvalidCatalogNameError",
    "ConnectionFailureError", "AdminShutdownError", "CrashShutdownError",
}


def problem_type(slug: str) -> str:
    return f"urn:vmc:problem:{slug}"


class ProblemError(Exception):
    """Raised anywhere; rendered as problem+json with `status` and a stable `type`."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(detail or title or str(status))
        self.status = status
        self.detail = detail
        self.slug = slug or _SLUGS.get(status, "error")
        self.title = title or _TITLES.get(status, "Error")
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}


class NotFound(ProblemError):
    def __init__(self, what: str):
        super().__init__(404, f"{what} not found")


class Problem(BaseModel):
    """The problem+json body (documented on every route)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


def problem_body(
    status: int,
    detail: str | None = None,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "type": problem_type(slug or _SLUGS.get(status, "error")),
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "request_id": request_id_var.get(),
    }
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return orjson.dumps(body)


def problem_response(status: int, detail: str | None = None, headers: dict[str, str] | None = None, **kw) -> Response:
    return Response(problem_body(status, detail, **kw), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _loc(loc: tuple | list) -> list:
    return [str(part) if not isinstance(part, int) else part for part in loc]


def validation_errors(exc_errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for err in exc_errors:
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not accepted in this request)"
        out.append({"loc": _loc(err.get("loc", ())), "msg": msg})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError):
        return problem_response(
            exc.status, exc.detail, headers=exc.headers, slug=exc.slug, title=exc.title, errors=exc.errors, extra=exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = validation_errors(list(exc.errors()))
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return problem_response(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    @app.exception_handler(ConnectionError)
    async def _database_away(_: Request, exc: Exception):
        # The database is unreachable, restarting or out of connections: retryable, not a bug.
        log.warning("database unavailable", extra={"error": repr(exc)[:500]})
        return problem_response(503, "the database is unavailable; retry shortly", headers={"Retry-After": "1"})

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError):
        if exc.connection_invalidated or type(exc.orig).__name__ in _UNAVAILABLE:
            return await _database_away(request, exc)
        if lost_a_race(exc):
            # Undone because of a concurrent transaction: the same request succeeds when sent again.
            log.warning("transaction lost a race", extra={"error": repr(exc.orig)[:500]})
            return problem_response(503, "a concurrent change got in the way of this request; retry it",
                                    headers={"Retry-After": "1", LOST_RACE_HEADER: "1"})
        raise exc

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return problem_response(500, "an unexpected error occurred; it has been logged with this request id")


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": _TITLES[status]}
    for status in (401, 403, 404, 422, 429)
}
