"""The analytics schema, one numbered step at a time."""
from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from services.analytics.models import AnalyticsState, OrganizationView
from shared.db import Migration
from shared.service import shared_tables


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=[*shared_tables(), OrganizationView.__table__, AnalyticsState.__table__])


MIGRATIONS = [Migration(1, "organisation view, state, platform tables", _v1)]
