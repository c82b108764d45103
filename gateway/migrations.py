"""The gateway's own schema: API keys, then the append-only audit trail."""
from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from gateway.audit import create_audit_table
from gateway.keys import ApiKey
from shared.db import Migration


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=[ApiKey.__table__])


MIGRATIONS = [
    Migration(1, "api keys", _v1),
    Migration(2, "audit trail (append-only: triggers refuse UPDATE and DELETE)", create_audit_table),
]
