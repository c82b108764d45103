"""Assessments: the database row and the wire shapes (create, public, instrument)."""
from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, StrictInt, StringConstraints
from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel

from services.activities.assessments.instruments import INSTRUMENTS
from shared.db import timestamp_field

Phase = Literal["baseline", "midline", "endline"]
InstrumentCode = Literal[tuple(INSTRUMENTS)]  # type: ignore[valid-type]
ItemCode = Annotated[str, StringConstraints(min_length=1, max_length=60)]

# Wider than any instrument, so an unknown item is reported by name (a 422 naming it) rather than
# the map being refused whole, yet bounded so one body cannot carry thousands of keys.
MAX_SCORE_ITEMS = 40

_REPLACES_DOC = (
    "Id of the assessment this one replaces: the current assessment of the same volunteer, "
    "instrument and phase. Without it, a second assessment for that volunteer, instrument and phase "
    "is a 409 naming the first. The replaced one stays readable, with `replaced_by` set."
)


class Assessment(SQLModel, table=True):
    __tablename__ = "assessments"
    __table_args__ = (
        Index("ix_assessments_updated_at_id", "updated_at", "id"),
        # One current assessment per volunteer, instrument and phase; replaced ones are kept for history.
        Index(
            "uq_assessments_current", "volunteer_id", "instrument", "phase", unique=True,
            postgresql_where=text("replaced_by IS NULL"), sqlite_where=text("replaced_by IS NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    volunteer_id: uuid.UUID = Field(index=True)
    # The volunteer's managing organisation: who may read and replace the assessment. It follows the
    # volunteer to another organisation and to a merge's survivor.
    organization_id: uuid.UUID = Field(index=True)
    instrument: str = Field(max_length=40)
    phase: str = Field(max_length=10)
    taken_on: date
    scores: dict[str, int] = Field(sa_column=Column(JSON, nullable=False))
    total: int
    replaces: uuid.UUID | None = Field(default=None)
    replaced_by: uuid.UUID | None = Field(default=None)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class AssessmentCreate(SQLModel):
    """What a client sends. `total` is computed, `id`, `status` and the timestamps are the service's:
    each of them, like any unknown field, is a 422."""

    model_config = ConfigDict(extra="forbid")

    volunteer_id: uuid.UUID
    instrument: InstrumentCode = Field(description="An instrument code from GET /assessment-instruments")
    phase: Phase
    taken_on: date = Field(description="Local date (Asia/Phnom_Penh), not in the future")
    scores: dict[ItemCode, StrictInt] = Field(
        max_length=MAX_SCORE_ITEMS,
        description="Every item of the instrument, each an integer in the instrument's range; no other item",
    )
    replaces: uuid.UUID | None = Field(default=None, description=_REPLACES_DOC)


class AssessmentPublic(SQLModel):
    id: uuid.UUID
    volunteer_id: uuid.UUID
    instrument: str
    phase: str
    taken_on: date
    scores: dict[str, int]
    total: int
    replaces: uuid.UUID | None
    replaced_by: uuid.UUID | None = Field(description="Set once another assessment replaced this one")
    created_at: datetime
    updated_at: datetime


class ItemPublic(SQLModel):
    code: str
    name_en: str
    name_km: str


class InstrumentPublic(SQLModel):
    code: str
    name_en: str
    name_km: str
    min_score: int
    max_score: int
    items: list[ItemPublic]


class InstrumentList(SQLModel):
    items: list[InstrumentPublic]
    next_cursor: str | None = None
