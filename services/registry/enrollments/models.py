"""Enrolments: a volunteer in a project (role, started on, ended on, reason); row and wire shapes."""
from __future__ import annotations

import uuid
from datetime import date, datetime

from pydantic import ConfigDict, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from shared.db import timestamp_field
from shared.text import clean_text

ROLE_MAX = 100
END_REASON_MAX = 500


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollments"
    __table_args__ = (
        # One open enrolment per volunteer and project, enforced by the database under concurrency.
        Index(
            "uq_enrollments_open", "volunteer_id", "project_id", unique=True,
            postgresql_where=text("ended_on IS NULL"), sqlite_where=text("ended_on IS NULL"),
        ),
        Index("ix_enrollments_updated_at_id", "updated_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    volunteer_id: uuid.UUID = Field(foreign_key="volunteers.id", index=True)
    # No foreign key: projects arrive in a later migration; the service checks the project exists.
    project_id: uuid.UUID = Field(index=True)
    role: str | None = Field(default=None, max_length=ROLE_MAX)
    started_on: date
    ended_on: date | None = None
    end_reason: str | None = Field(default=None, max_length=END_REASON_MAX)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


def _clean(value: str | None) -> str | None:
    try:
        return clean_text(value)
    except ValueError as exc:
        raise PydanticCustomError("text", str(exc)) from exc


class EnrollmentCreate(SQLModel):
    model_config = ConfigDict(extra="forbid")

    project_id: uuid.UUID
    role: str | None = Field(default=None, max_length=ROLE_MAX)
    started_on: date

    @field_validator("role")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        return _clean(value)


class EnrollmentEnd(SQLModel):
    model_config = ConfigDict(extra="forbid")

    ended_on: date
    end_reason: str | None = Field(default=None, max_length=END_REASON_MAX)

    @field_validator("end_reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        return _clean(value)


class EnrollmentPublic(SQLModel):
    id: uuid.UUID
    volunteer_id: uuid.UUID
    project_id: uuid.UUID
    role: str | None
    started_on: date
    ended_on: date | None
    end_reason: str | None
    created_at: datetime
    updated_at: datetime
