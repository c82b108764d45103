"""Wire shapes of the registry's internal references route (what another service may ask on a miss)."""
from __future__ import annotations

import uuid
from datetime import date

from typing import Annotated

from pydantic import ConfigDict, StringConstraints
from sqlmodel import Field, SQLModel

MAX_IDS = 1000


class ReferencesQuery(SQLModel):
    model_config = ConfigDict(extra="forbid")

    volunteer_ids: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_IDS)
    project_ids: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_IDS)
    location_codes: list[Annotated[str, StringConstraints(max_length=8)]] = Field(default_factory=list, max_length=MAX_IDS)


class VolunteerFacts(SQLModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    erased: bool
    merged_into: uuid.UUID | None


class ProjectFacts(SQLModel):
    id: uuid.UUID
    program_id: uuid.UUID
    organization_id: uuid.UUID
    focus_areas: list[str]
    start_date: date | None
    end_date: date | None


class ProgramFacts(SQLModel):
    id: uuid.UUID
    code: str


class OrganizationFacts(SQLModel):
    id: uuid.UUID
    parent_id: uuid.UUID | None
    national: bool


class EnrollmentFacts(SQLModel):
    id: uuid.UUID
    volunteer_id: uuid.UUID
    project_id: uuid.UUID
    started_on: date
    ended_on: date | None


class LocationFacts(SQLModel):
    code: str
    level: str
    parent_code: str | None


class References(SQLModel):
    """What exists of what was asked; anything missing does not exist. `organizations` holds every
    organisation of the volunteers and projects with all their ancestors (visibility is decided on that chain)."""

    volunteers: list[VolunteerFacts] = []
    projects: list[ProjectFacts] = []
    programs: list[ProgramFacts] = []
    organizations: list[OrganizationFacts] = []
    enrollments: list[EnrollmentFacts] = []
    locations: list[LocationFacts] = []
