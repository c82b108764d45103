"""The registry's schema, one numbered step at a time (applied at start-up and by the tests)."""
from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from services.registry.gazetteer import PROVINCES
from services.registry.locations.models import Location
from services.registry.normalize import normalize_name
from services.registry.organizations.models import Organization
from services.registry.programs.models import Program
from services.registry.projects.models import Project
from services.registry.settings import GDY_ORGANIZATION_ID
from services.registry.enrollments.models import Enrollment
from services.registry.volunteers.models import Volunteer, VolunteerExternalId
from shared.db import Migration, utcnow
from shared.service import shared_tables


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=[*shared_tables(), Location.__table__, Organization.__table__])
    now = utcnow()
    conn.execute(
        insert(Location.__table__),
        [
            {"code": code, "level": "province", "name_en": en, "name_km": km, "parent_code": None,
             "search_key": f"{normalize_name(en)} {normalize_name(km)}", "created_at": now, "updated_at": now}
            for code, en, km in PROVINCES
        ],
    )
    # The national body: the organisation of the first admin key. Its creation event is written by
    # the service at start-up (see app.seed), since migrations do not publish.
    import uuid

    conn.execute(
        insert(Organization.__table__),
        [{"id": uuid.UUID(GDY_ORGANIZATION_ID), "name": "General Department of Youth", "name_km": "អគ្គនាយកដ្ឋានយុវជន",
          "kind": "government", "parent_id": None, "province_codes": [c for c, _, _ in PROVINCES], "national": True,
          "created_at": now, "updated_at": now}],
    )


def _v2(conn: Connection) -> None:
    SQLModel.metadata.create_all(
        conn, tables=[Volunteer.__table__, VolunteerExternalId.__table__, Enrollment.__table__]
    )


def _v3(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=[Program.__table__, Project.__table__])


MIGRATIONS = [
    Migration(1, "gazetteer provinces, organisations, outbox", _v1),
    Migration(2, "volunteers, their external ids, enrolments", _v2),
    Migration(3, "programmes and projects", _v3),
]
