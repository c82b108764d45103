"""The test harness: a real broker, real databases and the real processes, on free ports.

Broker: `VMC_TEST_KAFKA_BOOTSTRAP` (an external broker), else a testcontainers Apache Kafka when
`VMC_TEST_KAFKA=testcontainers` and a Docker engine answers, else a Tansu process started here.
Database: `VMC_TEST_DATABASE_URL` (a PostgreSQL server URL or `sqlite`), else PostgreSQL at
127.0.0.1:5432 when reachable, else SQLite files. Each stack gets fresh databases, dropped after.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from deploy.processes import free_port, start_tansu, start_uvicorn, stop, wait_ready
from shared import manifest
from shared.db import make_engine

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
# Each service of the manifest: its name and app import string (the gateway starts beside them).
SERVICES = {service.name: service.app for service in manifest.SERVICES}


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def database_mode() -> str:
    """'postgresql' or 'sqlite' for this test run."""
    url = os.environ.get("VMC_TEST_DATABASE_URL", "")
    if url == "sqlite":
        return "sqlite"
    if url.startswith("postgres"):
        return "postgresql"
    return "postgresql" if _pg_reachable() else "sqlite"


def pg_server_url() -> str:
    url = os.environ.get("VMC_TEST_DATABASE_URL", "")
    return url if url.startswith("postgres") else PG_DEFAULT


class Databases:
    """Fresh databases, one per component, created on demand and dropped at close."""

    def __init__(self, workdir: Path, mode: str | None = None):
        self.mode = mode or database_mode()  # 'postgresql' or 'sqlite'; bench/ runs both in one process
        self.workdir = workdir
        self.created: list[str] = []
        self.tag = "vmct_" + secrets.token_hex(4)

    def url(self, component: str) -> str:
        if self.mode == "sqlite":
            return f"sqlite+aiosqlite:///{self.workdir / (component + '.db')}"
        name = f"{self.tag}_{component}"
        self._run_admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        server = pg_server_url().rsplit("/", 1)[0]
        return server.replace("postgresql://", "postgresql+asyncpg://") + "/" + name

    def _run_admin(self, *statements: str) -> None:
        """Each statement on a connection of its own, side by side. Synchronous, and callable from
        inside a running event loop (its own loop in a thread)."""

        async def run_all() -> None:
            await asyncio.gather(*(self._admin(sql) for sql in statements))

        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run_all()).result()

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(pg_server_url())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def drop(self) -> None:
        # Each DROP DATABASE waits for a checkpoint; run together they share them (measured: 3 drops
        # 2.5 s one after the other, 1.1 s side by side).
        if self.created:
            self._run_admin(*(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self.created))
        self.created.clear()


def broker_kind() -> str:
    """'external', 'testcontainers' or 'tansu': which broker this test run uses (see Broker)."""
    if os.environ.get("VMC_TEST_KAFKA_BOOTSTRAP"):
        return "external"
    if os.environ.get("VMC_TEST_KAFKA") == "testcontainers":
        return "testcontainers"
    return "tansu"


# Fault tests stop and restart the broker: only the Tansu process the harness starts can be.
needs_stoppable_broker = pytest.mark.skipif(
    broker_kind() != "tansu", reason="stops and starts the local Tansu broker; an external one cannot be stopped here"
)


class Broker:
    """The Kafka-protocol broker of a test run; a local Tansu can be stopped and started again."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.container = None
        external = os.environ.get("VMC_TEST_KAFKA_BOOTSTRAP")
        if external:
            self.kind, self.bootstrap = "external", external
        elif os.environ.get("VMC_TEST_KAFKA") == "testcontainers":
            from testcontainers.kafka import KafkaContainer

            self.container = KafkaContainer().start()
            self.kind, self.bootstrap = "testcontainers", self.container.get_bootstrap_server()
        else:
            self.port = free_port()
            self.kind, self.bootstrap = "tansu", f"127.0.0.1:{self.port}"
            self.start()

    @property
    def idempotence(self) -> bool:
        return self.kind != "tansu"

    def start(self) -> None:
        assert self.kind == "tansu"
        self.proc = start_tansu(self.port, self.workdir / "broker.log", cluster_id="vmc-test")

    def stop(self, kill: bool = False) -> None:
        """Stop the broker (SIGTERM; `kill`: SIGKILL, as a crash). On memory storage it loses its log."""
        if self.proc is not None:
            if kill:
                self.proc.kill()
                self.proc.wait()
            else:
                stop(self.proc)
            self.proc = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): it answers nothing, yet keeps its log for `resume`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            self.resume()  # a frozen process would not stop on SIGTERM
        self.stop()
        if self.container is not None:
            self.container.stop()


@dataclass
class Stack:
    """Broker, three services and the gateway as real processes (what `make run` starts)."""

    broker: Broker
    workdir: Path
    databases: Databases
    admin_key: str = field(default_factory=lambda: f"vmc_{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}")
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {
            "VMC_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "VMC_KAFKA_IDEMPOTENCE": "true" if self.broker.idempotence else "false",
            "VMC_INTERNAL_SECRET": self.secret,
            "VMC_DATA_DIR": str(self.workdir),
            "VMC_BOOTSTRAP_ADMIN_KEY": self.admin_key,
            "VMC_LOG_LEVEL": "WARNING",
        }
        for name, port in self.ports.items():
            env[f"VMC_{name.upper()}_PORT"] = str(port)
            env[f"VMC_{name.upper()}_URL"] = f"http://127.0.0.1:{port}"
        env.update(self.extra_env)
        return env

    def start(self) -> "Stack":
        for name in [*SERVICES, "gateway"]:
            self.ports[name] = free_port()
            self.urls[name] = f"http://127.0.0.1:{self.ports[name]}"
        self.db_urls = {name: self.databases.url(name) for name in [*SERVICES, "gateway"]}
        for name in SERVICES:
            self.start_part(name)
        for name in SERVICES:
            self.wait_ready(name, "/ready", 90)
        self.start_part("gateway")
        self.wait_ready("gateway", "/ready", 60)
        return self

    def wait_ready(self, name: str, path: str, timeout: float) -> None:
        """Wait for `name` to answer 200 on `path`; a failure shows the end of its log (why it died)."""
        try:
            wait_ready(self.urls[name] + path, timeout, self.procs[name])
        except (RuntimeError, TimeoutError) as exc:
            log = self.workdir / f"{name}.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{name}: {exc}\n--- end of {log} ---\n{tail}") from exc

    def start_part(self, name: str) -> None:
        app = SERVICES.get(name, "gateway.app:create_app")
        env = {**self.env(), f"VMC_{name.upper()}_DATABASE_URL": self.db_urls[name]}
        self.procs[name] = start_uvicorn(app, self.ports[name], env, self.workdir / f"{name}.log")

    def stop_part(self, name: str, kill: bool = False) -> int:
        """Stop a part (SIGTERM, or SIGKILL when `kill`); its exit code."""
        proc = self.procs.pop(name)
        if kill:
            proc.kill()
            return proc.wait()
        return stop(proc)

    def restart_part(self, name: str) -> None:
        self.stop_part(name)
        self.start_part(name)
        self.wait_ready(name, "/health", 60)

    @property
    def api(self) -> str:
        return self.urls["gateway"] + "/api/v1"

    async def query(self, name: str, sql: str, **params) -> list[tuple]:
        """Rows of a part's own database: what the part itself recorded (outbox, processed events)."""
        engine = make_engine(self.db_urls[name])
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(text(sql), params)]
        finally:
            await engine.dispose()

    def close(self) -> None:
        # The gateway first, as `make run` stops: no request reaches a service that has stopped.
        for name in sorted(self.procs, key=lambda name: name != "gateway"):
            self.stop_part(name)
        self.databases.drop()


@contextmanager
def stack_of_its_own(**extra_env: str) -> Iterator[Stack]:
    """A started stack with a broker, databases and a folder of its own, all removed after: for tests
    that stop, restart or break its parts without disturbing the session's `stack`."""
    workdir = new_workdir()
    broker = Broker(workdir)
    stack = Stack(broker=broker, workdir=workdir, databases=Databases(workdir), extra_env=dict(extra_env))
    try:
        stack.start()
        yield stack
    finally:
        stack.close()
        broker.close()
        remove_workdir(workdir)


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="vmc-test-"))


def remove_workdir(path: Path) -> None:
    """Remove a stack's folder (its logs and SQLite files), unless VMC_TEST_KEEP_WORKDIR is set: then
    it is left for reading the parts' logs after a failure."""
    if os.environ.get("VMC_TEST_KEEP_WORKDIR"):
        print(f"kept {path}")
        return
    shutil.rmtree(path, ignore_errors=True)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
