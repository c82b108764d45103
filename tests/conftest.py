"""Session fixtures: one broker, one full stack (processes) per test session, async clients, and
rolled-back database sessions per service (tests/db.py) for tests of rules and queries."""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from services.activities.migrations import MIGRATIONS as ACTIVITIES_MIGRATIONS
from services.analytics.migrations import MIGRATIONS as ANALYTICS_MIGRATIONS
from services.registry.migrations import MIGRATIONS as REGISTRY_MIGRATIONS
from tests.db import MigratedDatabases, db_session
from tests.harness import SERVICES, Broker, Databases, Stack, new_workdir, remove_workdir, stack_of_its_own


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
def fault_stack_of_the_session():
    """The stack the fault tests break (test_broker_loss, test_platform_faults, test_rolling_restart): a
    broker, databases and processes of its own, so stopping its broker or restarting its parts disturbs
    no other test; one for those modules, as a stack takes a while to start. Take `fault_stack`."""
    # Consumers rejoin their group quickly after a part or the broker restarts (on Tansu a join waits
    # ~half of the session timeout).
    with stack_of_its_own(VMC_KAFKA_SESSION_TIMEOUT_MS="4000") as s:
        yield {"stack": s, "whole": False}


@pytest.fixture
async def fault_stack(fault_stack_of_the_session):
    """The fault stack, whole before the test and left whole by it: the broker running and every part
    answering 200 on /ready (so the broker reachable, nothing being re-published). A test that leaves it
    broken fails at its teardown, naming what, instead of failing the next test silently."""
    state, stack = fault_stack_of_the_session, fault_stack_of_the_session["stack"]
    if not state["whole"]:  # the first test, or the last one failed its check: nothing else touches it
        await wait_whole(stack, "before the test")
    state["whole"] = False
    yield stack
    await wait_whole(stack, "after the test")
    state["whole"] = True


def restore(stack: Stack) -> list[str]:
    """Start again what a test left stopped (or frozen); what that was."""
    broken = []
    broker = stack.broker.proc
    if stack.broker.kind == "tansu" and (broker is None or broker.poll() is not None):
        broken.append("broker stopped")
        stack.broker.start()
    elif broker is not None and Path(f"/proc/{broker.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
        broken.append("broker frozen")
        stack.broker.resume()
    for name in [*SERVICES, "gateway"]:
        proc = stack.procs.get(name)
        if proc is None or proc.poll() is not None:
            broken.append(f"{name} stopped")
            stack.procs.pop(name, None)
            stack.start_part(name)
    return broken


async def wait_whole(stack: Stack, when: str, timeout: float = 90.0) -> None:
    broken = restore(stack)
    last: dict[str, str] = {}

    async def every_part_ready() -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            for name in [*SERVICES, "gateway"]:
                try:
                    answer = await client.get(stack.urls[name] + "/ready")
                except httpx.TransportError as exc:
                    last[name] = repr(exc)
                else:
                    last[name] = "ready" if answer.status_code == 200 else f"{answer.status_code} {answer.text[:300]}"
        return all(state == "ready" for state in last.values())

    try:
        await eventually(every_part_ready, timeout, 0.2, what="every part of the fault stack ready")
    except AssertionError as exc:
        raise AssertionError(f"fault stack {when}: {exc}: {last}; found and started again: {broken}") from None
    assert not broken, f"fault stack {when}: found {', '.join(broken)} (started again, now ready)"


@pytest.fixture
async def fault_admin(fault_stack):
    """A client of the fault stack's gateway holding its national bootstrap admin key."""
    async with admin_client(fault_stack) as client:
        yield client


@pytest.fixture
async def fault_direct(fault_stack):
    """Clients straight to each service of the fault stack, for its operations endpoints (/ready, /metrics)."""
    clients = {name: httpx.AsyncClient(base_url=fault_stack.urls[name], timeout=30) for name in SERVICES}
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


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


def admin_client(stack: Stack) -> httpx.AsyncClient:
    """A client of `stack`'s gateway holding its national bootstrap admin key."""
    return httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30)


@pytest.fixture
async def admin(stack):
    """A client of the gateway holding the national bootstrap admin key."""
    async with admin_client(stack) as client:
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
