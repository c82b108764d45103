"""Gazetteer entries: province → district → commune → village, coded as Cambodia's NCDD codes."""
from __future__ import annotations

from datetime import datetime
from enum import Enum

from sqlmodel import Field, SQLModel

from shared.db import timestamp_field


class LocationLevel(str, Enum):
    province = "province"
    district = "district"
    commune = "commune"
    village = "village"


class Location(SQLModel, table=True):
    __tablename__ = "locations"

    code: str = Field(primary_key=True, max_length=8)
    level: LocationLevel = Field(index=True)
    name_en: str | None = Field(default=None, max_length=200)
    name_km: str | None = Field(default=None, max_length=200)
    parent_code: str | None = Field(default=None, foreign_key="locations.code", index=True, max_length=8)
    # Normalised names (Latin and Khmer) for search; see services.registry.normalize.
    search_key: str = Field(default="", max_length=500)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class LocationPublic(SQLModel):
    code: str
    level: LocationLevel
    name_en: str | None
    name_km: str | None
    parent_code: str | None
    created_at: datetime
    updated_at: datetime


class ImportItem(SQLModel):
    index: int
    status: str  # created | updated | ignored | error
    code: str | None = None
    errors: list[dict] | None = None


class ImportSummaryPublic(SQLModel):
    """DHIS2-like import summary; `index` is the spreadsheet row number (the header is row 1)."""

    created: int
    updated: int
    ignored: int
    errors: int
    dry_run: bool
    items: list[ImportItem]
