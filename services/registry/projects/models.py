"""Projects: the database row and the wire shapes (create, update, public)."""
from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import Enum

from pydantic import ConfigDict, field_validator
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from shared.db import timestamp_field
from shared.text import clean_text


class FocusArea(str, Enum):
    climate_change = "climate_change"
    digital_literacy = "digital_literacy"
    education = "education"
    health = "health"
    child_protection = "child_protection"
    environment = "environment"
    community_development = "community_development"
    other = "other"


# A project runs in a handful of places; a cap keeps one row (and its event) bounded.
MAX_LOCATIONS = 500


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    program_id: uuid.UUID = Field(foreign_key="programs.id", index=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id", index=True)
    name: str | None = Field(default=None, max_length=300)
    name_km: str | None = Field(default=None, max_length=300)
    focus_areas: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    location_codes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    start_date: date | None = None
    end_date: date | None = None
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field(index=True)


class _Input(SQLModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("name", "name_km", check_fields=False)
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return clean_text(value)

    @field_validator("focus_areas", check_fields=False)
    @classmethod
    def _focus(cls, value: list[FocusArea] | None) -> list[FocusArea] | None:
        return None if value is None else sorted(set(value), key=lambda f: f.value)

    @field_validator("location_codes", check_fields=False)
    @classmethod
    def _codes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        for code in value:
            if not (code.isascii() and code.isdigit() and len(code) in (2, 4, 6, 8)):
                raise ValueError(f"{code!r} is not a gazetteer code (2, 4, 6 or 8 digits)")
        return sorted(set(value))


class ProjectCreate(_Input):
    program_id: uuid.UUID
    organization_id: uuid.UUID
    name: str | None = Field(default=None, min_length=1, max_length=300)
    name_km: str | None = Field(default=None, min_length=1, max_length=300)
    focus_areas: list[FocusArea] = Field(default_factory=list, max_length=len(FocusArea))
    location_codes: list[str] = Field(default_factory=list, max_length=MAX_LOCATIONS)
    start_date: date
    end_date: date | None = None


class ProjectUpdate(_Input):
    program_id: uuid.UUID | None = None
    organization_id: uuid.UUID | None = None
    name: str | None = Field(default=None, min_length=1, max_length=300)
    name_km: str | None = Field(default=None, min_length=1, max_length=300)
    focus_areas: list[FocusArea] | None = Field(default=None, max_length=len(FocusArea))
    location_codes: list[str] | None = Field(default=None, max_length=MAX_LOCATIONS)
    start_date: date | None = None
    end_date: date | None = None


class ProjectPublic(SQLModel):
    id: uuid.UUID
    program_id: uuid.UUID
    organization_id: uuid.UUID
    name: str | None
    name_km: str | None
    focus_areas: list[str]
    location_codes: list[str]
    start_date: date | None
    end_date: date | None
    created_at: datetime
    updated_at: datetime
