"""The activities service: activity logs, verification and skills assessments (routes to come)."""
from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from services.activities.settings import ActivitiesSettings
from shared.db import Migration
from shared.events import ACTIVITIES_TOPIC
from shared.service import ServiceSpec, create_service_app, shared_tables


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=shared_tables())


MIGRATIONS = [Migration(1, "platform tables", _v1)]


def create_app(settings: ActivitiesSettings | None = None) -> FastAPI:
    return create_service_app(
        ServiceSpec(
            name="activities",
            settings=settings or ActivitiesSettings(),
            migrations=MIGRATIONS,
            publishes=[ACTIVITIES_TOPIC],
            description="Activity logs, verification and skills assessments.",
        )
    )
