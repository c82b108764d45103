"""Programmes: the database row and the wire shapes (create, public)."""
from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import ConfigDict, field_validator
from sqlmodel import Field, SQLModel

from shared.db import timestamp_field
from shared.text import clean_text

# Uppercase letters, digits and hyphens, starting with a letter or digit: codes appear in analytics
# dimensions (`program=VMC`) and DHIS2 mappings, so they must stay URL- and CSV-safe.
CODE_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9-]{0,19}")


class Program(SQLModel, table=True):
    __tablename__ = "programs"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    code: str = Field(max_length=20, unique=True)
    name: str | None = Field(default=None, max_length=300)
    name_km: str | None = Field(default=None, max_length=300)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field(index=True)


class ProgramCreate(SQLModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=20, schema_extra={"pattern": f"^{CODE_PATTERN.pattern}$"}, description="e.g. VMC, AYRG, NYVP")
    name: str | None = Field(default=None, min_length=1, max_length=300)
    name_km: str | None = Field(default=None, min_length=1, max_length=300)

    @field_validator("code", mode="before")
    @classmethod
    def _code(cls, value: object) -> object:
        if isinstance(value, str) and not CODE_PATTERN.fullmatch(value):
            raise ValueError("must be 1-20 upper-case letters A-Z, digits or hyphens, not starting with a hyphen (e.g. VMC)")
        return value

    @field_validator("name", "name_km")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return clean_text(value)


class ProgramPublic(SQLModel):
    id: uuid.UUID
    code: str
    name: str | None
    name_km: str | None
    created_at: datetime
    updated_at: datetime
