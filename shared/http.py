"""Pure ASGI request context of the services and the gateway: request ids, body checks, metrics, gateway proof."""
from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.caller import CALLER_HEADER, SIGNATURE_HEADER, decode_caller
from shared.errors import LOST_RACE_HEADER, ProblemError, problem_body, PROBLEM_JSON
from shared.logs import request_id_var
from shared.manifest import upload_route
from shared.metrics import Metrics

log = logging.getLogger(__name__)

JSON_LIMIT = 2 * 1024 * 1024
OPEN_PATHS = ("/health", "/ready", "/metrics", "/api/v1/openapi.json", "/api/v1/docs", "/api/v1/asyncapi.json", "/openapi.json")


def body_limit(path: str) -> int:
    """The largest body a route takes: an upload route's own limit (service manifest), else JSON's."""
    upload = upload_route(path)
    return upload.limit if upload is not None else JSON_LIMIT


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header `name` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def problem_answer(status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None,
                   **kw) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a problem+json answer (`kw`: slug, title, extra members)."""
    body = problem_body(status, detail, **kw)
    return [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())] + (headers or []), body


async def send_problem(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None, **kw) -> None:
    head, body = problem_answer(status, detail, headers, **kw)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def usable_request_id(sent: str | None) -> str | None:
    """The X-Request-Id a caller sent, if it is one to echo (not empty, at most 200 characters)."""
    return sent if sent and len(sent) <= 200 else None


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-Id when it sent a usable one, else a new random id.

    Behind the gateway a request always arrives with the gateway's id; a new one is made only for
    direct calls (tests, probes), so a plain uuid4 will do (the gateway makes its own ids cheaper:
    gateway/headers.py)."""
    return usable_request_id(header(scope, b"x-request-id")) or str(uuid.uuid4())


HeaderReader = Callable[[Scope, bytes], str | None]


def precheck(scope: Scope, secret: str | None = None, read: HeaderReader = header) -> ProblemError | None:
    """What can be refused from the head alone: a missing or forged gateway proof (when `secret` is
    given), a body announced over the limit, a body in a media type the route does not take.
    `read` reads a request header (the gateway passes its own, which knows the headers its server noted)."""
    path = scope["path"]
    if secret is not None and not path.startswith(OPEN_PATHS):
        try:
            caller = decode_caller(read(scope, CALLER_HEADER.encode()), read(scope, SIGNATURE_HEADER.encode()), secret)
        except ProblemError as exc:
            return exc
        scope.setdefault("state", {})["caller"] = caller
    query = scope.get("query_string")
    if query and (b"%00" in query or b"\x00" in query):
        return nul_in_query(query)
    length = read(scope, b"content-length")
    if length is not None:
        try:
            if int(length) > body_limit(path):
                return ProblemError(413, f"the request body exceeds {body_limit(path)} bytes")
        except ValueError:
            return ProblemError(400, "invalid Content-Length")
    if scope["method"] in ("POST", "PUT", "PATCH") and (length not in (None, "0") or read(scope, b"transfer-encoding")):
        if not content_type_allowed(path, read(scope, b"content-type")):
            upload = upload_route(path)
            return ProblemError(415, "send JSON (Content-Type: application/json)"
                                + (" or " + ", ".join(upload.media_types) if upload is not None else ""))
    return None


def nul_in_query(query: bytes) -> ProblemError:
    """The 422 for a query string carrying a NUL character (%00): no parameter of the API takes one,
    and PostgreSQL cannot even compare text holding one (the query would fail with a 500)."""
    names = sorted({name.replace("\x00", "%00") for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                    if "\x00" in name or "\x00" in value})
    message = "NUL characters (%00) are not allowed"
    errors = [{"loc": ["query", name], "msg": message} for name in names] or [{"loc": ["query"], "msg": message}]
    return ProblemError(422, "; ".join(f"query.{name}: {message}" for name in names) or f"query: {message}", errors=errors)


def content_type_allowed(path: str, content_type: str | None) -> bool:
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct == "application/json" or ct.endswith("+json"):
        return True
    upload = upload_route(path)
    return upload is not None and ct in upload.media_types


class LostRaceRetry:
    """A write that lost a race in the database (deadlock detected, serialization failure: its whole
    transaction undone, nothing of it stored, its idempotency record included) is run again, up to
    `attempts` times in all, after a short random pause, before its 503 goes out: the client sees the
    answer of the run that got through. The request body is kept for the runs (uploads, which stream,
    are not run again, nor reads, which take no locks). The marking header
    (`shared.errors.LOST_RACE_HEADER`) never leaves the service."""

    def __init__(self, app: ASGIApp, attempts: int = 3):
        self.app = app
        self.attempts = attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        marker = LOST_RACE_HEADER.encode()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH", "DELETE") or upload_route(scope["path"]):
            async def send_unmarked(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [(n, v) for n, v in message.get("headers", []) if n.lower() != marker]
                await send(message)

            await self.app(scope, receive, send_unmarked)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        for attempt in range(1, self.attempts + 1):
            delivered = False

            async def replay() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            lost: list[bool] = []

            async def send_unless_lost(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    if any(name.lower() == marker for name, _ in headers):
                        if attempt < self.attempts:
                            lost.append(True)
                            return
                        message["headers"] = [(n, v) for n, v in headers if n.lower() != marker]
                elif lost:
                    return
                await send(message)

            await self.app(scope, replay, send_unless_lost)
            if not lost:
                return
            log.info("request run again after losing a race in the database", extra={"attempt": attempt})
            await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)


class RequestContextMiddleware:
    """Request id (echoed or made), body size and media-type checks, metrics; optional gateway proof."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        *,
        secret: str | None = None,
        route_of: Callable[[Scope], str] | None = None,
    ):
        self.app = app
        self.metrics = metrics
        self.secret = secret  # set on services: only signed calls from the gateway pass
        self.route_of = route_of or (lambda scope: scope.get("route").path if scope.get("route") else "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status_holder = [500]
        started: list[bool] = []
        answered: list[bool] = []  # the whole answer has been sent
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                started.append(True)
                message["headers"] = list(message.get("headers", [])) + [rid_header]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered.append(True)
            await send(message)

        try:
            problem = precheck(scope, self.secret)
            if problem is not None:
                status_holder[0] = problem.status
                await send_problem(send, problem.status, problem.detail or "", [rid_header], slug=problem.slug, errors=problem.errors)
                return
            limit = body_limit(scope["path"])
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise ProblemError(413, f"the request body exceeds {limit} bytes")
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except ProblemError as exc:  # raised while the app was still reading the body
                status_holder[0] = exc.status
                await send_problem(send, exc.status, exc.detail or "", [rid_header])
            except Exception:
                # Handled here, not by Starlette's outermost handler, so that the answer and the log line
                # still carry the request id (the outer handler runs after it is reset).
                if answered:
                    # Starlette's server-error middleware sent the app's 500 (its handler logged the
                    # error) and raises it again for the server: uvicorn would log it twice and close
                    # the connection, and a request already on its way on it would be lost.
                    return
                if started:
                    raise
                log.exception("unhandled error")
                status_holder[0] = 500
                await send_problem(send, 500, "an unexpected error occurred; it has been logged with this request id", [rid_header])
        finally:
            self.metrics.observe_request(scope["method"], self.route_of(scope), status_holder[0], time.perf_counter() - start)
            request_id_var.reset(token)
