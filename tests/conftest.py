"""Session fixtures: one broker, one full stack (processes) per test session, async clients, and
rolled-back database sessions per service (tests/db.py) for tests of rules and queries."""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from services.activities.migrations import MIGRATIONS as ACTIVITIES_MIGRATIONS
from services.analytics.migrations import MIGRATIONS as ANALYTICS_MIGRATIONS
from services.registry.migrations import MIGRATIONS as REGISTRY_MIGRATIONS
from tests.db import MigratedDatabases, db_session
from tests.harness import Broker, Databases, Stack, new_workdir, remove_workdir


def pytest_report_header(config):
    from tests.harness import database_mode

    return f"vmc: database={database_mode()}"


@pytest.fixture(scope="session")
def workdir():
    path = new_workdir()
    yield path
    remove_workdir(path)


@pytest.fixture(scope="session")
def broker(workdir):
    b = Broker(workdir)
    yield b
    b.close()


@pytest.fixture(scope="session")
def stack(broker, workdir):
    s = Stack(broker=broker, workdir=workdir, databases=Databases(workdir))
    try:
        s.start()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
async def migrated_databases():
    databases = MigratedDatabases()
    try:
        yield databases
    finally:
        await databases.close()


registry_session = db_session("registry", REGISTRY_MIGRATIONS)
activities_session = db_session("activities", ACTIVITIES_MIGRATIONS)
analytics_session = db_session("analytics", ANALYTICS_MIGRATIONS)


@pytest.fixture
async def admin(stack):
    """A client of the gateway holding the national bootstrap admin key."""
    async with httpx.AsyncClient(
        base_url=stack.api, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def anonymous(stack):
    async with httpx.AsyncClient(base_url=stack.urls["gateway"], timeout=30) as client:
        yield client


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0, interval: float = 0.1,
                     what: str = "condition"):
    """Wait for `check()` (a coroutine function or a plain one) to become true, or fail after `timeout`
    seconds: the one way tests wait for something, never a bare sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s")


def wait_until(check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """`eventually` for tests that are not coroutines (subprocesses, the launcher)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s")
