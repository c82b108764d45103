"""The analytics service's SQL schema: only the platform tables; the figures live in the read store (store.py)."""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from shared.db import Migration
from shared.service import shared_tables


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=shared_tables())


def _v2(conn: Connection) -> None:
    # The SQL read models that the DuckDB store replaced (a database migrated before it has them).
    for table in ("organization_view", "analytics_state"):
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


MIGRATIONS = [
    Migration(1, "platform tables", _v1),
    Migration(2, "drop the SQL read models (the DuckDB read store replaced them)", _v2),
]
