"""Verification and correction: the version history row and the wire shapes (decisions, corrections, bulk)."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import ConfigDict, field_validator
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from services.activities.activities.models import MAX_BATCH, Beneficiaries
from shared.db import timestamp_field
from shared.text import clean_text

REASON_MAX = 2000


class ActivityVersion(SQLModel, table=True):
    """A version of an activity as it stood before a correction replaced it (the current version is the
    activity row itself). `state` is the public representation of that version, every field of it."""

    __tablename__ = "activity_versions"

    activity_id: uuid.UUID = Field(primary_key=True)
    version: int = Field(primary_key=True)
    state: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: dt.datetime = timestamp_field()


def _two_decimals(value: float | None) -> float | None:
    if value is not None and abs(value * 100 - round(value * 100)) > 1e-6:
        raise ValueError("at most two decimals (0.01 h)")
    return None if value is None else round(value, 2)


class VerifyRequest(SQLModel):
    model_config = ConfigDict(extra="forbid")

    approved_hours: float | None = Field(
        default=None, gt=0, le=24,
        description="Hours approved, at most the hours claimed (partial approval); all of them when left out. "
                    "To approve none, reject the entry.",
    )

    _hours = field_validator("approved_hours")(_two_decimals)


class ReasonRequest(SQLModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=REASON_MAX, description="Why; shown to the submitter, never published")

    @field_validator("reason")
    @classmethod
    def _clean(cls, value: str) -> str:
        cleaned = clean_text(value)
        if not cleaned:
            raise ValueError("a reason is required")
        return cleaned


class ActivityCorrection(SQLModel):
    """The fields a correction may change (a submitted entry only). Who, which project and the decision
    fields are not among them: any other field is a 422. A field left out keeps its value."""

    model_config = ConfigDict(extra="forbid")

    activity_type: str | None = None
    date: dt.date | None = None
    hours: float | None = None
    location_code: str | None = None
    beneficiaries: Beneficiaries | None = None
    description: str | None = None
    evidence_urls: list[str] | None = None


class BulkDecision(SQLModel):
    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    decision: Literal["verify", "reject"]
    approved_hours: float | None = Field(default=None, gt=0, le=24, description="verify only; at most the hours claimed")
    reason: str | None = Field(default=None, min_length=1, max_length=REASON_MAX, description="required to reject")

    _hours = field_validator("approved_hours")(_two_decimals)

    @field_validator("reason")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return clean_text(value)


class BulkRequest(SQLModel):
    """Items are checked one by one (a bad item is reported, the others decided), hence `dict`s here."""

    model_config = ConfigDict(extra="forbid")

    # Documented as decisions, parsed as anything: an item that is not one is an item error, not a 422.
    items: list[Any] = Field(max_length=MAX_BATCH, description=f"at most {MAX_BATCH} decisions",
                             schema_extra={"json_schema_extra": {"items": BulkDecision.model_json_schema()}})
