"""The gateway's hot path: authenticate, limit, sign the caller context, forward, relay the answer.

A pure ASGI handler on one pooled aiohttp session (measured: httpx's pool collapses under
concurrency; aiohttp keeps most of the direct throughput).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from starlette.types import Receive, Scope, Send

from gateway.keys import KeyStore
from gateway.ratelimit import ConcurrencyLimiter, LocalRateLimiter
from gateway.routing import owner_of
from gateway.settings import GatewaySettings
from shared.caller import CallerContext, encode_caller
from shared.errors import ProblemError
from shared.http import body_limit, header, is_import, send_problem
from shared.logs import request_id_var
from shared.metrics import Metrics

log = logging.getLogger(__name__)

# Never forwarded upstream: hop-by-hop headers, the client's credentials, and anything claiming to be
# the gateway's own caller context (the gateway strips it and signs its own).
_DROP_REQUEST = {
    b"host", b"connection", b"keep-alive", b"proxy-authorization", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"authorization", b"content-length", b"x-request-id", b"expect",
}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date", "x-request-id"}
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; lets one probe through after `cooldown` seconds."""

    threshold: int = 5
    cooldown: float = 5.0
    failures: int = 0
    opened_at: float = field(default=0.0)

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
        self.breakers = {name: CircuitBreaker() for name in upstreams}
        self.session: aiohttp.ClientSession | None = None
        self.audit = None  # set by the app: callable(caller, method, path, status)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=30, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self.session:
            await self.session.close()

    async def authenticate(self, scope: Scope) -> CallerContext:
        auth = header(scope, b"authorization")
        if not auth or not auth[:7].lower() == "bearer ":
            raise ProblemError(401, "missing API key: send Authorization: Bearer <key>", slug="unauthenticated",
                               headers={"WWW-Authenticate": "Bearer"})
        found = await self.keys.authenticate(auth[7:].strip())
        if found is None:
            raise ProblemError(401, "invalid, expired or revoked API key", slug="unauthenticated",
                               headers={"WWW-Authenticate": "Bearer"})
        caller, row = found
        scope.setdefault("state", {})["caller"] = caller
        scope["state"]["key_rate_limit"] = row.rate_limit_per_minute or self.settings.rate_limit_per_minute
        return caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        owner = owner_of(path)
        if owner is None:
            raise ProblemError(404, f"no such route: {path}")
        caller = await self.authenticate(scope)
        decision = await self.limiter.hit(caller.key_id, scope["state"]["key_rate_limit"])
        rate_headers = decision.headers()
        if not decision.allowed:
            self.metrics.rate_limited.labels("rate").inc()
            await send_problem(send, 429, f"rate limit of {decision.limit} requests a minute exceeded", rate_headers)
            return
        if not self.concurrency.acquire(caller.key_id):
            self.metrics.rate_limited.labels("concurrency").inc()
            await send_problem(send, 429, "too many concurrent requests for this API key", [(b"retry-after", b"1")] + rate_headers)
            return
        try:
            status = await self._forward(scope, receive, send, owner, caller, rate_headers)
        finally:
            self.concurrency.release(caller.key_id)
        if self.audit is not None:
            self.audit(caller, scope["method"], path, status)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = body_limit(scope["path"])
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ProblemError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProblemError(413, f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _forward(self, scope, receive, send, owner: str, caller: CallerContext, extra_headers) -> int:
        breaker = self.breakers[owner]
        if not breaker.allow():
            raise ProblemError(503, f"the {owner} service is unavailable (circuit open); retry shortly",
                               headers={"Retry-After": str(int(breaker.cooldown))})
        body = await self._read_body(scope, receive)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k not in _DROP_REQUEST and not k.startswith(b"x-vmc-")]
        headers.extend(encode_caller(caller, self.settings.internal_secret).items())
        headers.append(("x-request-id", request_id_var.get() or ""))
        url = self.upstreams[owner] + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        method = scope["method"]
        timeout = self.settings.import_timeout_seconds if is_import(scope["path"]) else self.settings.upstream_timeout_seconds
        attempts = 2 if method in IDEMPOTENT else 1
        assert self.session is not None
        for attempt in range(attempts):
            try:
                async with self.session.request(
                    method, url, data=body or None, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    payload = await response.read()
                    breaker.success()
                    out_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
                                   if k.lower() not in _DROP_RESPONSE]
                    out_headers.append((b"content-length", str(len(payload)).encode()))
                    out_headers.extend(extra_headers)
                    await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
                    await send({"type": "http.response.body", "body": payload})
                    return response.status
            except asyncio.TimeoutError:
                breaker.failure()
                raise ProblemError(504, f"the {owner} service did not answer within {timeout:g} s")
            except aiohttp.ClientConnectionError as exc:
                breaker.failure()
                if attempt + 1 < attempts:
                    continue
                log.warning("upstream unreachable", extra={"upstream": owner, "error": repr(exc)})
                raise ProblemError(503, f"the {owner} service is unavailable; retry shortly", headers={"Retry-After": "1"})
        raise AssertionError("unreachable")
