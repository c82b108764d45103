"""Projection rows of registry entities: only what the activity rules and visibility need.

`event_time` is the time of the newest event applied to a row; an older event is ignored. Rows
learned from the registry's internal route (a projection miss) carry `FETCHED` instead, so that
every event, even the creation event that arrives after, is newer and applied.
"""
from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from shared.db import UTCDateTime

FETCHED = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _event_time():
    return Field(default=FETCHED, sa_type=UTCDateTime, nullable=False)


class OrganizationView(SQLModel, table=True):
    __tablename__ = "registry_organizations"

    id: uuid.UUID = Field(primary_key=True)
    parent_id: uuid.UUID | None = None
    national: bool = False
    event_time: datetime = _event_time()


class ProgramView(SQLModel, table=True):
    __tablename__ = "registry_programs"

    id: uuid.UUID = Field(primary_key=True)
    code: str = Field(max_length=20)
    event_time: datetime = _event_time()


class ProjectView(SQLModel, table=True):
    __tablename__ = "registry_projects"

    id: uuid.UUID = Field(primary_key=True)
    program_id: uuid.UUID
    organization_id: uuid.UUID
    focus_areas: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    start_date: date | None = None
    end_date: date | None = None
    event_time: datetime = _event_time()


class VolunteerView(SQLModel, table=True):
    """`organization_id` is None while the volunteer is known only from an erasure or a merge that
    arrived before its registration: such a row is a miss for the rules, but its flags stay."""

    __tablename__ = "registry_volunteers"

    id: uuid.UUID = Field(primary_key=True)
    organization_id: uuid.UUID | None = None
    erased: bool = False
    merged_into: uuid.UUID | None = None
    event_time: datetime = _event_time()


class EnrollmentView(SQLModel, table=True):
    __tablename__ = "registry_enrollments"
    __table_args__ = (Index("ix_registry_enrollments_volunteer_project", "volunteer_id", "project_id"),)

    id: uuid.UUID = Field(primary_key=True)
    volunteer_id: uuid.UUID
    project_id: uuid.UUID
    started_on: date
    ended_on: date | None = None
    event_time: datetime = _event_time()


class LocationView(SQLModel, table=True):
    __tablename__ = "registry_locations"

    code: str = Field(primary_key=True, max_length=8)
    level: str = Field(max_length=10)
    parent_code: str | None = Field(default=None, max_length=8)


TABLES = [t.__table__ for t in (OrganizationView, ProgramView, ProjectView, VolunteerView, EnrollmentView, LocationView)]
