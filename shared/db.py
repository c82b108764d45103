"""Async database access for SQLite (embedded) and PostgreSQL (production) with explicit migrations."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import DateTime, TypeDecorator, event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

log = logging.getLogger(__name__)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, pool_size: int = 10, max_overflow: int = 5) -> AsyncEngine:
    if is_sqlite(url):
        # One connection: SQLite has one writer anyway, and a single connection avoids SQLITE_BUSY
        # between our own tasks (measured: faster and a far better p99 than a pool).
        engine = create_async_engine(
            url, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0, pool_timeout=60
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):
            # The driver's own BEGIN comes only before a write, so a SAVEPOINT could open the
            # transaction and its RELEASE commit everything: SQLAlchemy says BEGIN itself (below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=10000"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN")

        @event.listens_for(engine.sync_engine, "handle_error")
        def _end_failed_commit(context):
            # A COMMIT that SQLite refuses (a deferred constraint, a busy database) leaves its
            # transaction open, and SQLAlchemy hands the connection on as if it had ended: the next
            # BEGIN would fail on the one connection for ever. A failure outside a statement is a
            # COMMIT or ROLLBACK; ending the transaction here cannot hide it, the error still raises.
            if context.statement is None and context.connection is not None:
                try:
                    context.connection.connection.dbapi_connection.rollback()
                except Exception:  # noqa: BLE001 - the original error is the one to raise
                    log.warning("could not end a failed SQLite transaction", exc_info=True)

        return engine
    # Modest per-process pools: several replicas of four components share one server's connection limit.
    # No pre-ping (a round trip on every checkout); a connection found dead is invalidated on use and
    # the request answers 503 (see shared/errors.py), the next one gets a fresh connection.
    return create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # A Session class of its own, so session events (the outbox's after-commit wake-up) stay per app.
    session_class = type("AppSession", (Session,), {})
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=session_class)


@dataclass(frozen=True)
class Migration:
    """One numbered, forward-only schema step, run in a transaction on a sync connection."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _ensure_version_table(conn: Connection) -> None:
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, description VARCHAR(200) NOT NULL)"
        )
    )


def _apply_pending(conn: Connection, migrations: Sequence[Migration]) -> list[int]:
    _ensure_version_table(conn)
    done = {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}
    applied = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        migration.apply(conn)
        conn.execute(
            text("INSERT INTO schema_migrations (version, description) VALUES (:v, :d)"),
            {"v": migration.version, "d": migration.description},
        )
        applied.append(migration.version)
    return applied


async def migrate(engine: AsyncEngine, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not yet recorded; safe to call from several replicas at once on PostgreSQL."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Replicas starting together take turns; the second finds nothing left to do.
            await conn.execute(text("SELECT pg_advisory_xact_lock(424242)"))
        applied = await conn.run_sync(_apply_pending, migrations)
    if applied:
        log.info("applied migrations", extra={"versions": applied})
    return applied


async def pending_migrations(engine: AsyncEngine, migrations: Sequence[Migration]) -> list[int]:
    """The versions not applied yet (all of them on an empty database); changes nothing."""

    def pending(conn: Connection) -> list[int]:
        if not inspect(conn).has_table("schema_migrations"):
            return sorted(m.version for m in migrations)
        done = {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}
        return sorted(m.version for m in migrations if m.version not in done)

    async with engine.connect() as conn:
        return await conn.run_sync(pending)


async def wait_for_schema(engine: AsyncEngine, migrations: Sequence[Migration], poll_s: float = 2.0) -> None:
    """Return once another process (`vmc migrate`) has applied every migration; logs what it waits for."""
    said = None
    while missing := await pending_migrations(engine, migrations):
        if missing != said:
            log.error("database schema behind: migration(s) %s not applied (run `vmc migrate`, or set "
                      "VMC_MIGRATE_ON_START=true); waiting", ", ".join(map(str, missing)))
            said = missing
        await asyncio.sleep(poll_s)  # polling for a step another process runs


class UTCDateTime(TypeDecorator):
    """Timestamps are aware UTC in Python on both dialects (timestamptz on PostgreSQL)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use aware UTC datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def timestamp_field(index: bool = False, nullable: bool = False, default_now: bool = True):
    """A SQLModel field holding an aware UTC timestamp."""
    from sqlmodel import Field

    kwargs = {"default_factory": utcnow} if default_now else {"default": None}
    return Field(sa_type=UTCDateTime, nullable=nullable, index=index, **kwargs)
