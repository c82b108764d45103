"""API keys: generated once, stored as an HMAC of the secret part, looked up by a public prefix."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import ConfigDict, field_validator
from sqlalchemy import JSON, Column, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel

from shared.caller import SCOPES, CallerContext
from shared.db import timestamp_field
from shared.text import clean_text
from shared.times import as_utc

KEY_PREFIX = "vmc_"


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    prefix: str = Field(max_length=20, unique=True, index=True)
    key_hash: str = Field(max_length=64)
    name: str = Field(max_length=200)
    organization_id: uuid.UUID
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    national: bool = False
    rate_limit_per_minute: int | None = None
    expires_at: datetime | None = timestamp_field(nullable=True, default_now=False)
    revoked_at: datetime | None = timestamp_field(nullable=True, default_now=False)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class ApiKeyCreate(SQLModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    organization_id: uuid.UUID
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES))
    national: bool = False
    rate_limit_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    expires_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return clean_text(value)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(unknown)}; known: {', '.join(SCOPES)}")
        return sorted(set(value))

    @field_validator("expires_at")
    @classmethod
    def _future(cls, value: datetime | None) -> datetime | None:
        """With a zone, in UTC, and still to come: a key born expired is surely a mistaken date."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("give a time zone (RFC 3339, e.g. 2027-01-01T00:00:00Z)")
        value = as_utc(value)  # ValueError for a time with no UTC equivalent
        if value <= datetime.now(timezone.utc):
            raise ValueError("must be in the future")
        return value


class ApiKeyPublic(SQLModel):
    id: uuid.UUID
    prefix: str
    name: str
    organization_id: uuid.UUID
    scopes: list[str]
    national: bool
    rate_limit_per_minute: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ApiKeyCreated(ApiKeyPublic):
    key: str


def hash_secret(secret: str, server_secret: str) -> str:
    return hmac.digest(server_secret.encode(), secret.encode(), hashlib.sha256).hex()  # one C call per request


def split_key(key: str) -> tuple[str, str] | None:
    """`vmc_<prefix>_<secret>` → (prefix, whole key); None if it is not shaped like one of ours."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    parts = key.split("_", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return parts[1], key


def new_key_material(given: str | None = None) -> tuple[str, str]:
    """(prefix, key). A given key (bootstrap) must have our shape."""
    if given:
        parsed = split_key(given)
        if parsed is None:
            raise ValueError("a bootstrap key must look like vmc_<prefix>_<secret>")
        return parsed
    prefix = secrets.token_hex(4)
    return prefix, f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


async def create_key(session: AsyncSession, data: ApiKeyCreate, server_secret: str, given: str | None = None) -> tuple[ApiKey, str]:
    prefix, key = new_key_material(given)
    row = ApiKey(
        prefix=prefix,
        key_hash=hash_secret(key, server_secret),
        **data.model_dump(),
    )
    session.add(row)
    return row, key


@dataclass(frozen=True, slots=True)
class KnownKey:
    """What the proxy needs of a key row, prepared once per lookup (not per request)."""

    caller: CallerContext
    prefix: str
    rate_limit_per_minute: int | None
    expires: float | None  # POSIX seconds
    revoked: bool

    @classmethod
    def of(cls, row: ApiKey) -> "KnownKey":
        return cls(
            caller=CallerContext(str(row.id), row.organization_id, frozenset(row.scopes), row.national),
            prefix=row.prefix,
            rate_limit_per_minute=row.rate_limit_per_minute,
            expires=row.expires_at.timestamp() if row.expires_at is not None else None,
            revoked=row.revoked_at is not None,
        )

    def usable(self) -> bool:
        return not self.revoked and (self.expires is None or self.expires > time.time())


class KeyStore:
    """Authenticates keys; a positive or negative answer is cached for `ttl` seconds at most.

    Concurrent requests with a key not in the cache share one database lookup (a partner opening 32
    connections at once costs one query, not 32 pooled connections).
    """

    def __init__(self, maker: async_sessionmaker[AsyncSession], server_secret: str, ttl: float):
        self._maker = maker
        self._secret = server_secret
        self._ttl = ttl
        # The cache is keyed by a keyed BLAKE2b of the presented key (a per-process random key): it
        # never holds a key in clear, and costs a third of the HMAC-SHA256 that the stored hashes use.
        self._pepper = secrets.token_bytes(32)
        self._cache: dict[bytes, tuple[float, KnownKey | None]] = {}
        self._pending: dict[bytes, asyncio.Task] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    def _cache_key(self, key: str) -> bytes:
        return hashlib.blake2b(key.encode(), key=self._pepper, digest_size=20).digest()

    def cached(self, key: str) -> KnownKey | None:
        """The key if a fresh cached lookup says it is usable; None if it is not, or nobody looked yet.

        In the last quarter of an entry's life a lookup starts in the background, so a key in steady
        use is looked up again before its entry expires and no request waits on the database for it.
        An entry is never used past its time: a revocation still takes effect within `ttl`."""
        digest = self._cache_key(key)
        cached = self._cache.get(digest)
        if cached is None:
            return None
        expires, known = cached
        left = expires - time.monotonic()
        if left <= 0 or known is None or not known.usable():
            return None
        if left < self._ttl / 4 and digest not in self._pending:
            self._start_lookup(digest, key)
        return known

    async def authenticate(self, key: str) -> KnownKey | None:
        """The key if it exists, is not revoked and has not expired; else None."""
        digest = self._cache_key(key)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            known = cached[1]
        else:
            task = self._pending.get(digest) or self._start_lookup(digest, key)
            known = await asyncio.shield(task)  # one caller going away does not cancel the others' lookup
        return known if known is not None and known.usable() else None

    def _start_lookup(self, digest: bytes, key: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._lookup(key))
        self._pending[digest] = task
        task.add_done_callback(lambda done: self._remember(digest, done))
        return task

    def _remember(self, digest: bytes, task: asyncio.Task) -> None:
        self._pending.pop(digest, None)
        if task.cancelled() or task.exception() is not None:
            return
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self._ttl, task.result())

    async def _lookup(self, key: str) -> KnownKey | None:
        expected = hash_secret(key, self._secret)
        parsed = split_key(key)
        if parsed is None:
            hmac.compare_digest(expected, expected)  # same work as a real comparison
            return None
        async with self._maker() as session:
            row = (await session.execute(select(ApiKey).where(ApiKey.prefix == parsed[0]))).scalar_one_or_none()
        if row is None:
            hmac.compare_digest(expected, expected)
            return None
        return KnownKey.of(row) if hmac.compare_digest(row.key_hash, expected) else None
