"""Organisations: the database row and the wire shapes (create, update, public)."""
from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum

from pydantic import ConfigDict, field_validator
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from shared.db import timestamp_field
from shared.text import clean_text


class OrganizationKind(str, Enum):
    government = "government"
    ngo = "ngo"
    school = "school"
    youth_club = "youth_club"
    commune_council = "commune_council"
    private = "private"
    other = "other"


class OrganizationBase(SQLModel):
    name: str | None = Field(default=None, max_length=300)
    name_km: str | None = Field(default=None, max_length=300)
    kind: OrganizationKind
    parent_id: uuid.UUID | None = None
    province_codes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Organization(OrganizationBase, table=True):
    __tablename__ = "organizations"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    parent_id: uuid.UUID | None = Field(default=None, foreign_key="organizations.id", index=True)
    national: bool = False
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field(index=True)


class _Input(SQLModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("name", "name_km", check_fields=False)
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return clean_text(value)

    @field_validator("province_codes", check_fields=False)
    @classmethod
    def _codes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        for code in value:
            if not (isinstance(code, str) and len(code) == 2 and code.isdigit()):
                raise ValueError(f"{code!r} is not a 2-digit province code")
        return sorted(set(value))


class OrganizationCreate(_Input):
    name: str | None = Field(default=None, min_length=1, max_length=300)
    name_km: str | None = Field(default=None, min_length=1, max_length=300)
    kind: OrganizationKind
    parent_id: uuid.UUID | None = None
    province_codes: list[str] = Field(default_factory=list, max_length=25)


class OrganizationUpdate(_Input):
    name: str | None = Field(default=None, min_length=1, max_length=300)
    name_km: str | None = Field(default=None, min_length=1, max_length=300)
    kind: OrganizationKind | None = None
    parent_id: uuid.UUID | None = None
    province_codes: list[str] | None = Field(default=None, max_length=25)


class OrganizationPublic(SQLModel):
    id: uuid.UUID
    name: str | None
    name_km: str | None
    kind: OrganizationKind
    parent_id: uuid.UUID | None
    province_codes: list[str]
    created_at: datetime
    updated_at: datetime
