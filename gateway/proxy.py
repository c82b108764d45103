"""The gateway's hot path: authenticate, limit, sign the caller context, forward, relay the answer.

`Proxy.answer` does it all for one request and returns the answer; gateway/server.py's protocol
writes it in one go, and `Proxy.__call__` serves it as an ASGI app for the requests that protocol
leaves to ASGI. `Proxy.serve` is the same work without a task or a future, from callbacks, for the
usual request (a cached key, in-process limits, a kept-alive upstream connection); both share every
step that decides anything (`_admit`, `_plan`, `_done`, `_relay`, `_problem`, `_upstream_problem`).
Forwarding uses gateway/upstream.py's keep-alive pools (measured: httpx's pool collapses under
concurrency; aiohttp's client costs about twice our own per request). The aiohttp session is kept
for the readiness and OpenAPI fetches, which are not on the hot path.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import aiohttp
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from gateway.audit import AuditWriter, classify, entry
from gateway.headers import header, precheck, request_id_of
from gateway.keys import KeyStore, KnownKey
from gateway.metrics import Metrics
from gateway.ratelimit import ConcurrencyLimiter, Decision, LocalRateLimiter
from gateway.routing import owner_of
from gateway.settings import GatewaySettings
from gateway.upstream import ConnectFailed, Dropped, ReadTimeout, Response, UpstreamClient, UpstreamError, request_head, retry_delay
from shared.caller import CallerContext, encode_caller
from shared.errors import ProblemError
from shared.http import body_limit, problem_answer
from shared.logs import request_id_var
from shared.manifest import upload_route

log = logging.getLogger(__name__)

# Never forwarded upstream: hop-by-hop headers, the client's credentials, and anything claiming to be
# the gateway's own caller context (the gateway strips it and signs its own).
_DROP_REQUEST = {
    b"host", b"connection", b"keep-alive", b"proxy-authorization", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"authorization", b"content-length", b"x-request-id", b"expect",
}
_DROP_RESPONSE = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"server", b"date", b"x-request-id"}
# Signed caller headers are reused for this long (the context is valid for 60 s): signing costs more
# than the rest of the header work, and a key's context rarely changes.
SIGNED_REUSE_SECONDS = 25.0
# Scope key under which a server that already holds the whole request body hands it over (see
# gateway/server.py): no receive() round, no time limit to arm for bytes that are already here.
WHOLE_BODY = "vmc.body"
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers (with Content-Length), body


@dataclass
class CircuitBreaker:
    """Per upstream: opens after `threshold` consecutive failed requests, so callers get a 503 at once
    instead of waiting on a dead service; after `cooldown` seconds one probe request goes through,
    and its success closes the circuit again."""

    threshold: int = 5
    cooldown: float = 5.0
    failures: int = 0
    opened_at: float = field(default=0.0)

    @property
    def open(self) -> bool:
        return self.failures >= self.threshold

    def allow(self) -> bool:
        if self.failures < self.threshold:
            return True
        if time.monotonic() - self.opened_at >= self.cooldown:
            self.opened_at = time.monotonic()  # one probe per cooldown
            return True
        return False

    def success(self) -> None:
        self.failures = 0

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = time.monotonic()


class Proxy:
    def __init__(self, settings: GatewaySettings, keys: KeyStore, upstreams: dict[str, str], metrics: Metrics, limiter=None):
        self.settings = settings
        self.keys = keys
        self.upstreams = upstreams
        self.metrics = metrics
        self.limiter = limiter or LocalRateLimiter()
        self.concurrency = ConcurrencyLimiter(settings.max_concurrent_per_key)
        # Per service, two circuits: its ordinary routes, and its long ones (imports, batches, exports),
        # whose time-outs say the long job is slow, not that the service is away for every route.
        self.breakers = {
            name: CircuitBreaker(settings.circuit_failure_threshold, settings.circuit_cooldown_seconds) for name in upstreams
        }
        self.long_breakers = {
            name: CircuitBreaker(settings.circuit_failure_threshold, settings.circuit_cooldown_seconds) for name in upstreams
        }
        self.session: aiohttp.ClientSession | None = None  # readiness and OpenAPI fetches only
        self.upstream = UpstreamClient(limit=128)
        self.targets = {name: _target(url) for name, url in upstreams.items()}
        self._signed: dict[str, tuple[float, CallerContext, list[tuple[bytes, bytes]]]] = {}  # by key id
        self.audit: AuditWriter | None = None  # set by the app; entries are queued, never awaited
        self._auth_blocked: dict[str, float] = {}  # client address → monotonic time its 429s end

    async def start(self) -> None:
        # Idle pooled connections are dropped after 4 s, before uvicorn's 5 s keep-alive closes them
        # from the other side (a request sent on a connection being closed would fail).
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=4, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self.session:
            await self.session.close()
        await self.upstream.close()

    async def authenticate(self, scope: Scope) -> KnownKey:
        auth = header(scope, b"authorization")
        if not auth or not auth[:7].lower() == "bearer ":
            raise ProblemError(401, "missing API key: send Authorization: Bearer <key>", slug="unauthenticated",
                               headers={"WWW-Authenticate": "Bearer"})
        address = (scope.get("client") or ("unknown",))[0]
        # A throttled address is refused before its key is looked at, so a guess that happens to be
        # right is not confirmed either.
        if self._auth_blocked:
            blocked_for = self._auth_blocked.get(address, 0.0) - time.monotonic()
            if blocked_for > 0:
                raise self._throttled(math.ceil(blocked_for))
        try:
            known = await self.keys.authenticate(auth[7:].strip())
        except (OSError, SQLAlchemyError) as exc:  # the key database is away: say so, retryable
            log.warning("API keys cannot be checked", extra={"error": repr(exc)})
            raise ProblemError(503, "API keys cannot be checked right now; retry shortly", headers={"Retry-After": "1"}) from None
        if known is None:
            await self._failed_authentication(address)
            raise ProblemError(401, "invalid, expired or revoked API key", slug="unauthenticated",
                               headers={"WWW-Authenticate": "Bearer"})
        return known

    def rate_limit_of(self, known: KnownKey) -> int:
        return known.rate_limit_per_minute or self.settings.rate_limit_per_minute

    async def _failed_authentication(self, address: str) -> None:
        """Wrong keys spend the address's own bucket (shared by replicas when Redis is used); once it is
        empty the address is throttled until a token is back."""
        decision = await self.limiter.hit("auth-failures:" + address, self.settings.failed_auth_per_minute)
        if decision.allowed:
            return
        now = time.monotonic()
        if len(self._auth_blocked) > 10_000:  # bounded memory under a distributed attack
            self._auth_blocked = {a: t for a, t in self._auth_blocked.items() if t > now}
        self._auth_blocked[address] = now + decision.retry_after
        raise self._throttled(decision.retry_after)

    def _throttled(self, retry_after: int) -> ProblemError:
        self.metrics.rate_limited.labels("authentication").inc()
        return ProblemError(429, "too many wrong API keys from this address; retry later",
                            headers={"Retry-After": str(max(1, retry_after))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The proxy as an ASGI app (when the server is not gateway.server's protocol, or for a request
        that protocol leaves to ASGI: CORS, pipelining, HEAD, HTTP/1.0)."""
        status, headers, body = await self.answer(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope: Scope, receive: Receive) -> Answer:
        """One proxied request, whole: request id, checks, authentication, limits, forwarding, metrics,
        audit; the answer's status, headers (with Content-Length) and body. Everything a middleware
        stack would do, in one function. Never raises: a failure is a problem answer (a bug is logged
        and answered 500). `serve` does the same with callbacks when all it needs is in memory."""
        rid = request_id_of(scope)
        token = request_id_var.set(rid)
        start = time.perf_counter()
        answer_headers = [(b"x-request-id", rid.encode("latin-1"))]
        status = 500
        try:
            path = scope["path"]
            owner = owner_of(path)
            # Dot segments (plain or percent-encoded) would climb out of /api/v1 to a service's internal routes.
            if owner is None or "/." in path and any(segment in (".", "..") for segment in path.split("/")):
                raise ProblemError(404, f"no such route: {path}")
            problem = precheck(scope)
            if problem is not None:
                raise problem
            known = await self.authenticate(scope)
            caller = known.caller
            decision = await self.limiter.hit(caller.key_id, self.rate_limit_of(known))
            self._admit(caller, decision, answer_headers)
            try:
                breaker = self._breaker(owner, path)
                plan = self._plan(scope, owner, breaker, caller, await self._read_body(scope, receive))
                response = await self._send(plan)
                status = response.status
            except ProblemError as exc:
                status = exc.status
                raise
            finally:
                self._done(scope, known, status)
            return self._relay(response, answer_headers)
        except ProblemError as exc:
            status = exc.status
            return self._problem(exc, answer_headers)
        except Exception:
            # A bug still answers problem+json (no trace) and is logged with the request id.
            log.exception("unhandled error on a proxied route")
            status = 500
            return status, *problem_answer(500, "an unexpected error occurred; it has been logged with this request id", answer_headers)
        finally:
            self.metrics.observe_request(scope["method"], _route_label(scope["path"]), status, time.perf_counter() - start)
            request_id_var.reset(token)

    def serve(self, scope: Scope, reply: Callable[[int, list[tuple[bytes, bytes]], bytes], None]) -> bool:
        """`answer` without a task or a future, for a request whose whole body is in `scope[WHOLE_BODY]`:
        when everything it needs is in memory (a cached usable key, in-process rate limits, a closed
        circuit), the request is admitted here and forwarded on a kept-alive connection, and `reply`
        is called with the answer from the connection's callback. Returns False, having done nothing,
        when the request needs anything else (a key lookup, Redis, a refusal): `answer` takes it then.

        Measured at one client on one host: 0.26 ms of gateway CPU per read with this path, 0.31–0.38
        when the same protocol ran `answer` in a task, 0.34 on plain uvicorn (bench gateway_overhead)."""
        path = scope["path"]
        body = scope.get(WHOLE_BODY)
        if body is None or "/." in path:
            return False
        owner = owner_of(path)
        if owner is None or len(body) > body_limit(path) or precheck(scope) is not None:
            return False
        known = self.known_now(scope)
        if known is None:
            return False
        caller = known.caller
        breaker = self.breaker_of(owner, path)
        if breaker.open or not self.concurrency.available(caller.key_id):
            return False
        decision = self.limiter.hit_now(caller.key_id, self.rate_limit_of(known))
        if decision is None:
            return False
        # Counted by the rate limit: from here on this path answers, whatever happens.
        flight = _Flight(self, scope, known, reply, request_id_of(scope))
        token = request_id_var.set(flight.rid)
        try:
            self._admit(caller, decision, flight.answer_headers)
            try:
                flight.plan = plan = self._plan(scope, owner, breaker, caller, body)
                head = plan.head()
                conn = self.upstream.take_idle(plan.host, plan.port)
                if conn is None:
                    flight.continue_in_task(attempt=0, delay=0.0)
                else:
                    flight.conn = conn
                    try:
                        conn.send(plan.method, head, plan.body, conn.loop.time() + plan.timeout, flight.on_upstream)
                    except BaseException:
                        conn.close()
                        self.upstream.put_back(plan.host, plan.port, conn)
                        raise
            except BaseException:
                self._done(scope, known, 500)
                raise
        except ProblemError as exc:
            flight.finish(*self._problem(exc, flight.answer_headers))
        except Exception:
            log.exception("unhandled error on a proxied route")
            flight.finish(500, *problem_answer(500, "an unexpected error occurred; it has been logged with this request id",
                                               flight.answer_headers))
        finally:
            request_id_var.reset(token)
        return True

    def known_now(self, scope: Scope) -> KnownKey | None:
        """The caller's key when a fresh cached lookup says it is usable and its address is not
        throttled; None when `authenticate` must decide (it may wait on the database)."""
        auth = header(scope, b"authorization")
        if not auth or not auth[:7].lower() == "bearer ":
            return None
        if self._auth_blocked and self._auth_blocked.get((scope.get("client") or ("unknown",))[0], 0.0) > time.monotonic():
            return None
        return self.keys.cached(auth[7:].strip())

    def _admit(self, caller: CallerContext, decision: Decision, answer_headers: list[tuple[bytes, bytes]]) -> None:
        """The rate limit's decision and the per-key concurrency cap: a 429, or one more request in flight."""
        answer_headers += decision.headers()
        if not decision.allowed:
            self.metrics.rate_limited.labels("rate").inc()
            raise ProblemError(429, f"rate limit of {decision.limit} requests a minute exceeded")
        if not self.concurrency.acquire(caller.key_id):
            self.metrics.rate_limited.labels("concurrency").inc()
            raise ProblemError(429, "too many concurrent requests for this API key", headers={"Retry-After": "1"})

    def _done(self, scope: Scope, known: KnownKey, status: int) -> None:
        """An admitted request is over: its concurrency slot is free (before the answer is written: a
        client with exactly `cap` keep-alive connections may send its next request as soon as it has
        the answer), and it is audited when it must be."""
        self.concurrency.release(known.caller.key_id)
        self._audit(scope, known, status)

    def _audit(self, scope: Scope, known: KnownKey, status: int) -> None:
        if self.audit is not None:
            audited = classify(scope["method"], scope["path"], scope)
            if audited is not None:
                self.audit.record(entry(known.caller, known.prefix, audited[0], audited[1], status))

    @staticmethod
    def _relay(response: Response, answer_headers: list[tuple[bytes, bytes]]) -> Answer:
        headers = [item for item in response.headers if item[0] not in _DROP_RESPONSE]
        headers.append((b"content-length", str(len(response.body)).encode()))
        return response.status, headers + answer_headers, response.body

    @staticmethod
    def _problem(exc: ProblemError, answer_headers: list[tuple[bytes, bytes]]) -> Answer:
        headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()] + answer_headers
        return exc.status, *problem_answer(exc.status, exc.detail or "", headers, slug=exc.slug, title=exc.title, errors=exc.errors)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, within the size limit and the time limit (a client trickling bytes is cut off)."""
        limit = body_limit(scope["path"])
        whole = scope.get(WHOLE_BODY)
        if whole is not None:
            if len(whole) > limit:
                raise ProblemError(413, f"the request body exceeds {limit} bytes")
            return whole
        if not any(k == b"content-length" or k == b"transfer-encoding" for k, _ in scope["headers"]):
            # No body announced: the server answers receive() at once, no time limit needed.
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ProblemError(400, "client disconnected")
            if not message.get("more_body", False) and not message.get("body"):
                return b""
            chunks, size = [message.get("body", b"")], len(message.get("body", b""))
            if size > limit:
                raise ProblemError(413, f"the request body exceeds {limit} bytes")
        else:
            chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_read_timeout_seconds):
                while not chunks or message.get("more_body", False):
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ProblemError(400, "client disconnected")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise ProblemError(413, f"the request body exceeds {limit} bytes")
                    chunks.append(chunk)
            return b"".join(chunks)
        except TimeoutError:
            raise ProblemError(408, f"the request body was not received within {self.settings.body_read_timeout_seconds:g} s",
                               title="Request timeout", slug="request-timeout") from None

    def breaker_of(self, owner: str, path: str) -> CircuitBreaker:
        """The circuit a request goes through: its service's long-route one or its ordinary one."""
        return (self.long_breakers if is_long_route(path) else self.breakers)[owner]

    def _breaker(self, owner: str, path: str) -> CircuitBreaker:
        breaker = self.breaker_of(owner, path)
        if not breaker.allow():
            raise ProblemError(503, f"the {owner} service is unavailable (circuit open); retry shortly",
                               headers={"Retry-After": str(max(1, int(breaker.cooldown)))})
        return breaker

    def _plan(self, scope: Scope, owner: str, breaker: CircuitBreaker, caller: CallerContext, body: bytes) -> Plan:
        """The request as it goes upstream: the client's headers less hop-by-hop ones (those listed
        here and those its Connection header names, RFC 9110 §7.6.1), credentials and any claimed
        caller context; the gateway's signed context and the request id added."""
        method = scope["method"]
        drop = _DROP_REQUEST
        named = [value for name, value in scope["headers"] if name == b"connection"]
        if named:
            drop = drop | {token.strip().lower() for value in named for token in value.split(b",")}
        headers = [(k, v) for k, v in scope["headers"] if k not in drop and not k.startswith(b"x-vmc-")]
        headers += self._signed_headers(caller)
        headers.append((b"x-request-id", (request_id_var.get() or "").encode("latin-1")))
        # The path as the client encoded it: decoded, %3F, %23 or %2F would change the query or the route.
        raw = (scope.get("raw_path") or quote(scope["path"]).encode()).decode("latin-1")
        if scope.get("query_string"):
            raw += "?" + scope["query_string"].decode("latin-1")
        host, port, host_header, prefix = self.targets[owner]
        return Plan(owner, breaker, method, host, port, host_header, prefix + raw, headers, body,
                    timeout_for(self.settings, method, scope["path"]))

    async def _send(self, plan: Plan, attempt: int = 0) -> Response:
        """Forward, tried again as `retry_delay` says (`attempt` > 0: a retry, on a fresh connection)."""
        while True:
            try:
                response = await self.upstream.request(
                    plan.method, plan.host, plan.port, plan.target, plan.headers, plan.body, timeout=plan.timeout,
                    connect_timeout=self.settings.connect_timeout_seconds, host_header=plan.host_header, reuse=attempt == 0,
                )
            except (UpstreamError, OSError) as exc:
                delay = retry_delay(plan.method, exc, attempt)
                if delay is None:
                    raise self._upstream_problem(plan, exc) from None
                attempt += 1
                if delay > 0:
                    await asyncio.sleep(delay)
                continue
            plan.breaker.success()
            return response

    @staticmethod
    def _upstream_problem(plan: Plan, exc: Exception) -> ProblemError:
        """What the client is told when forwarding failed (the circuit breaker counts it)."""
        owner = plan.owner
        plan.breaker.failure()
        if isinstance(exc, ReadTimeout):
            log.warning("upstream timed out", extra={"upstream": owner, "timeout_s": plan.timeout})
            return ProblemError(504, f"the {owner} service did not answer within {plan.timeout:g} s")
        if isinstance(exc, (ConnectFailed, Dropped)):  # never saw the request, or dropped it before any answer
            log.warning("upstream unreachable", extra={"upstream": owner, "error": repr(exc)})
            return ProblemError(503, f"the {owner} service is unavailable; retry shortly", headers={"Retry-After": "1"})
        log.warning("upstream answer unusable", extra={"upstream": owner, "error": repr(exc)})  # e.g. cut off half-way
        return ProblemError(502, f"the {owner} service sent an incomplete answer")

    def _signed_headers(self, caller: CallerContext) -> list[tuple[bytes, bytes]]:
        now = time.monotonic()
        cached = self._signed.get(caller.key_id)
        # The same context object (the key store hands out one per lookup) or an equal one, which then
        # takes its place (the next request compares identities only): a key whose scopes or
        # organisation changed is signed again.
        if cached is not None and cached[0] > now:
            if cached[1] is caller:
                return cached[2]
            if cached[1] == caller:
                self._signed[caller.key_id] = (cached[0], caller, cached[2])
                return cached[2]
        if len(self._signed) > 10_000:  # bounded: old contexts are simply signed again
            self._signed.clear()
        signed = [(k.encode(), v.encode()) for k, v in encode_caller(caller, self.settings.internal_secret).items()]
        self._signed[caller.key_id] = (now + SIGNED_REUSE_SECONDS, caller, signed)
        return signed


@dataclass(slots=True)
class Plan:
    """One request as it goes upstream."""

    owner: str
    breaker: CircuitBreaker
    method: str
    host: str
    port: int
    host_header: bytes
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    timeout: float

    def head(self) -> bytes:
        return request_head(self.method, self.target, self.host_header, self.headers, self.body)


class _Flight:
    """A request `Proxy.serve` admitted: forwarded from a connection callback (or, with no idle
    connection, from a task), answered through `reply` once, then counted and audited."""

    __slots__ = ("proxy", "scope", "known", "reply", "rid", "start", "answer_headers", "plan", "conn")

    def __init__(self, proxy: Proxy, scope: Scope, known: KnownKey, reply: Callable, rid: str):
        self.proxy = proxy
        self.scope = scope
        self.known = known
        self.reply = reply
        self.rid = rid
        self.start = time.perf_counter()
        self.answer_headers = [(b"x-request-id", rid.encode("latin-1"))]
        self.plan: Plan | None = None
        self.conn = None

    def on_upstream(self, response: Response | None, error: UpstreamError | None) -> None:
        """The kept-alive connection's answer, or why there is none."""
        plan, conn = self.plan, self.conn
        self.conn = None
        self.proxy.upstream.put_back(plan.host, plan.port, conn)
        delay = None if error is None else retry_delay(plan.method, error, 0)
        if delay is not None:
            self.continue_in_task(attempt=1, delay=delay)
            return
        token = request_id_var.set(self.rid)
        try:
            if error is not None:
                self.settle(self.proxy._problem(self.proxy._upstream_problem(plan, error), self.answer_headers))
            else:
                plan.breaker.success()
                self.settle(self.proxy._relay(response, self.answer_headers))
        finally:
            request_id_var.reset(token)

    def continue_in_task(self, attempt: int, delay: float) -> None:
        task = asyncio.get_running_loop().create_task(self._forward(attempt, delay))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _forward(self, attempt: int, delay: float) -> None:
        request_id_var.set(self.rid)  # the task's own context
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            answer = self.proxy._relay(await self.proxy._send(self.plan, attempt), self.answer_headers)
        except ProblemError as exc:
            answer = self.proxy._problem(exc, self.answer_headers)
        except Exception:
            log.exception("unhandled error on a proxied route")
            answer = (500, *problem_answer(500, "an unexpected error occurred; it has been logged with this request id",
                                           self.answer_headers))
        self.settle(answer)

    def settle(self, answer: Answer) -> None:
        """The admitted request's answer: its slot freed, the answer sent, then (the client does not
        wait for it) its audit entry queued and its metrics counted."""
        self.proxy.concurrency.release(self.known.caller.key_id)
        try:
            self.finish(*answer)
        finally:
            self.proxy._audit(self.scope, self.known, answer[0])

    def finish(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        try:
            self.reply(status, headers, body)
        finally:
            self.proxy.metrics.observe_request(self.scope["method"], _route_label(self.scope["path"]), status,
                                               time.perf_counter() - self.start)


_background: set[asyncio.Task] = set()  # tasks of `_Flight`s, held until done


def _route_label(path: str) -> str:
    """Metric label of a proxied path: its service segment, not the raw path (ids would explode cardinality)."""
    return "/api/v1/" + path[8:].split("/", 1)[0]


def _target(url: str) -> tuple[str, int, bytes, str]:
    """host, port, Host header and path prefix of an upstream's base URL (plain HTTP only)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"upstream URLs must be http://host:port, not {url!r}")
    port = parts.port or 80
    return parts.hostname, port, parts.netloc.encode("latin-1"), parts.path.rstrip("/")


def is_long_route(path: str) -> bool:
    """Imports, batches and exports: their own time limits and their own circuit (see `timeout_for`)."""
    return upload_route(path) is not None or path.endswith("/batch") or "/export/" in path


def timeout_for(settings: GatewaySettings, method: str, path: str) -> float:
    """Per-route time limit: imports and batches may take minutes, exports longer than a read."""
    if upload_route(path) is not None or path.endswith("/batch"):
        return settings.import_timeout_seconds
    if "/export/" in path:
        return settings.export_timeout_seconds
    return settings.upstream_timeout_seconds
