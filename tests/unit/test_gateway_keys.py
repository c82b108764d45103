"""The key store: HMAC lookups, one database query for many concurrent requests, a bounded cache."""
from __future__ import annotations

import asyncio
import time

import pytest

from gateway.keys import ApiKeyCreate, KeyStore, create_key
from gateway.migrations import MIGRATIONS
from shared.db import make_engine, make_sessionmaker, migrate

ORG = "00000000-0000-4000-8000-000000000001"


@pytest.fixture
async def store_and_key(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    await migrate(engine, MIGRATIONS)
    maker = make_sessionmaker(engine)
    async with maker() as session:
        _, key = await create_key(session, ApiKeyCreate(name="partner", organization_id=ORG, scopes=["registry:read"]), "s3cret")
        await session.commit()
    store = KeyStore(maker, "s3cret", ttl=60)
    lookups = []
    real_lookup = store._lookup

    async def counted(*args):
        lookups.append(args[0])
        return await real_lookup(*args)

    store._lookup = counted
    yield store, key, lookups
    await engine.dispose()


async def test_concurrent_requests_share_one_lookup(store_and_key):
    store, key, lookups = store_and_key
    answers = await asyncio.gather(*(store.authenticate(key) for _ in range(32)))
    assert all(a is not None and a.caller.scopes == frozenset({"registry:read"}) for a in answers)
    assert len(lookups) == 1
    assert await store.authenticate(key) is not None and len(lookups) == 1  # cached


async def test_wrong_keys_are_refused_and_cached_too(store_and_key):
    store, key, lookups = store_and_key
    wrong = key[:-2] + "xx"
    assert await store.authenticate(wrong) is None
    assert await store.authenticate(wrong) is None
    assert await store.authenticate("not-even-shaped-like-a-key") is None
    assert len(lookups) == 2
    store.invalidate()
    assert await store.authenticate(key) is not None and len(lookups) == 3


async def test_a_key_in_use_is_looked_up_again_before_its_entry_expires_and_never_used_after(store_and_key):
    store, key, lookups = store_and_key
    store._ttl = 0.4
    digest = store._cache_key(key)

    def expires_in(seconds: float) -> None:
        store._cache[digest] = (time.monotonic() + seconds, store._cache[digest][1])

    assert await store.authenticate(key) is not None and len(lookups) == 1
    assert store.cached(key) is not None and not store._pending  # fresh: no lookup
    expires_in(0.05)  # the last quarter of the entry's life
    assert store.cached(key) is not None  # still answered from the cache...
    await asyncio.wait_for(store._pending[digest], 2)  # ...while a lookup runs in the background
    assert len(lookups) == 2 and store._cache[digest][0] - time.monotonic() > 0.3  # a new entry
    store._lookup = lambda *args: asyncio.sleep(10)  # the database stops answering
    expires_in(0.05)
    assert store.cached(key) is not None and digest in store._pending
    expires_in(-0.001)  # its time passes while the lookup still hangs
    assert store.cached(key) is None  # expired: never used past its time; `authenticate` decides
    store._pending.pop(digest).cancel()
