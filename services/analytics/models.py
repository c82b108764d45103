"""Read models built only from events; the service can drop them and rebuild from the topics."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from shared.db import timestamp_field


class OrganizationView(SQLModel, table=True):
    """Organisations as analytics knows them (the tree scopes what a non-national key may see)."""

    __tablename__ = "organization_view"

    id: uuid.UUID = Field(primary_key=True)
    parent_id: uuid.UUID | None = Field(default=None, index=True)
    kind: str = Field(max_length=50)
    province_codes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Time of the event that last changed the row: an older event arriving late is ignored.
    event_time: datetime = timestamp_field()


class AnalyticsState(SQLModel, table=True):
    """`as_of`: the time of the latest event applied."""

    __tablename__ = "analytics_state"

    name: str = Field(primary_key=True, max_length=50)
    as_of: datetime = timestamp_field()
