"""The activities service's schema, one numbered step at a time (applied at start-up and by the tests)."""
from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from services.activities.activities.models import Activity
from services.activities.activity_types.models import TAXONOMY, ActivityType
from services.activities.assessments.models import Assessment
from services.activities.registry_view.models import TABLES as REGISTRY_VIEW_TABLES
from services.activities.verification.models import ActivityVersion
from shared.db import Migration
from shared.service import shared_tables


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=shared_tables())


def _v2(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=[*REGISTRY_VIEW_TABLES, ActivityType.__table__, Activity.__table__])
    conn.execute(insert(ActivityType.__table__),
                 [{"code": c, "name_en": en, "name_km": km, "focus_area": f} for c, en, km, f in TAXONOMY])


MIGRATIONS = [
    Migration(1, "platform tables", _v1),
    Migration(2, "registry projection, activity types (seeded), activities", _v2),
    Migration(3, "assessments", lambda conn: SQLModel.metadata.create_all(conn, tables=[Assessment.__table__])),
    Migration(4, "activity versions", lambda conn: SQLModel.metadata.create_all(conn, tables=[ActivityVersion.__table__])),
]
