"""Request headers as the gateway reads them: the ones its server notes while parsing, and request ids."""
from __future__ import annotations

import itertools
import uuid

from starlette.types import Scope

from shared import http
from shared.errors import ProblemError

# Scope key of the request headers gateway/server.py noted as it parsed them: name → value of the
# first occurrence, for the names in WATCHED_HEADERS, so that `header` need not scan the list.
WATCHED = "vmc.watched"
WATCHED_HEADERS = frozenset({
    b"authorization", b"x-request-id", b"content-length", b"content-type", b"transfer-encoding", b"origin", b"expect",
    b"x-forwarded-for", b"x-forwarded-proto",
})


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header `name` (lower-case), or None."""
    watched = scope.get(WATCHED)
    if watched is not None and name in WATCHED_HEADERS:
        value = watched.get(name)
        return None if value is None else value.decode("latin-1")
    return http.header(scope, name)


def precheck(scope: Scope) -> ProblemError | None:
    """shared.http.precheck, reading the headers the server noted."""
    return http.precheck(scope, read=header)


# Ids of requests and audit entries: a random per-process base and a counter, shaped like a version-4
# UUID. As unique as uuid4 for tracing, without a getrandom() system call and a UUID object each time.
_ID_BASE = str(uuid.uuid4())[:24]
_ID_COUNTER = itertools.count(int.from_bytes(uuid.uuid4().bytes[:5], "big"))


def new_id() -> str:
    return f"{_ID_BASE}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-Id when it sent a usable one, else a new id."""
    return http.usable_request_id(header(scope, b"x-request-id")) or new_id()
