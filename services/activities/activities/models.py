"""Activities: the database row and the wire shapes (create, public, batch)."""
from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, field_validator, model_validator
from sqlalchemy import JSON, Column, Index, Numeric, Text
from sqlmodel import Field, SQLModel

from shared.db import timestamp_field
from shared.text import clean_text

STATUSES = ("submitted", "verified", "rejected", "voided")
# Entries whose hours count towards a volunteer's 24 hours a day (a rejected or voided one no longer does).
COUNTING = ("submitted", "verified")
MAX_DAY_HOURS = 24
MAX_EVIDENCE_URLS = 20
MAX_BATCH = 1000
LOCATION_CODE = re.compile(r"[0-9]{2}(?:[0-9]{2}){0,3}")
# Hours are stored with two decimals (0.01 h is 36 s), exactly, so that a day's sum is exact too.
HOURS = Numeric(5, 2, asdecimal=False)


class Activity(SQLModel, table=True):
    __tablename__ = "activities"
    __table_args__ = (
        Index("ix_activities_volunteer_date", "volunteer_id", "date"),
        # A partner's reference identifies its entry: a re-sent entry or batch creates nothing twice.
        Index("ux_activities_client_reference", "submitter_organization_id", "client_reference", unique=True),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    volunteer_id: uuid.UUID
    project_id: uuid.UUID = Field(index=True)
    program_id: uuid.UUID
    organization_id: uuid.UUID = Field(index=True, description="the project's organisation")
    volunteer_organization_id: uuid.UUID = Field(index=True)
    submitter_organization_id: uuid.UUID
    activity_type: str = Field(max_length=60)
    focus_area: str = Field(max_length=40, description="the activity type's")
    project_focus_areas: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    date: dt.date
    hours: float = Field(sa_type=HOURS)
    approved_hours: float | None = Field(default=None, sa_type=HOURS)
    location_code: str = Field(max_length=8)
    beneficiaries_female: int = 0
    beneficiaries_male: int = 0
    beneficiaries_other: int = 0
    beneficiaries_children: int = 0
    description: str | None = Field(default=None, sa_column=Column(Text))
    evidence_urls: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    client_reference: str | None = Field(default=None, max_length=200)
    status: str = Field(default="submitted", max_length=20, index=True)
    status_reason: str | None = Field(default=None, sa_column=Column(Text))
    decided_at: dt.datetime | None = timestamp_field(nullable=True, default_now=False)
    version: int = 1
    # Grows with every change (correction, decision, merge): events carry it so consumers keep the newest.
    revision: int = 1
    # Set when a merge of two volunteers put this entry's day over 24 hours: kept, never dropped, and said.
    conflict: str | None = Field(default=None, max_length=300)
    created_at: dt.datetime = timestamp_field()
    updated_at: dt.datetime = timestamp_field(index=True)


class Beneficiaries(SQLModel):
    model_config = ConfigDict(extra="forbid")

    female: int = Field(0, ge=0, le=1_000_000)
    male: int = Field(0, ge=0, le=1_000_000)
    other: int = Field(0, ge=0, le=1_000_000)
    children: int = Field(0, ge=0, le=3_000_000, description="how many of the people reached are under 18")

    @model_validator(mode="after")
    def _children_among_them(self):
        if self.children > self.female + self.male + self.other:
            raise ValueError("children cannot exceed female + male + other (children are counted among them)")
        return self


def _http_url(value: str) -> str:
    if any(ch.isspace() for ch in value) or any(ord(ch) < 32 for ch in value):
        raise ValueError("a URL cannot contain spaces or control characters")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


class ActivityCreate(SQLModel):
    """What a partner logs. `status`, `approved_hours`, `version`, `id` and times are the service's own."""

    model_config = ConfigDict(extra="forbid")

    volunteer_id: uuid.UUID
    project_id: uuid.UUID
    activity_type: str = Field(min_length=1, max_length=60, description="a code of GET /activity-types")
    date: dt.date = Field(description="local date in Asia/Phnom_Penh; not in the future")
    hours: float = Field(gt=0, le=MAX_DAY_HOURS, description="0 < hours <= 24, at most two decimals")
    location_code: str = Field(min_length=2, max_length=8, description="a gazetteer code of any level")
    beneficiaries: Beneficiaries = Field(default_factory=Beneficiaries)
    description: str | None = Field(default=None, min_length=1, max_length=4000)
    evidence_urls: list[str] = Field(default_factory=list, max_length=MAX_EVIDENCE_URLS,
                                     description="http(s) links, stored as given and never fetched")
    client_reference: str | None = Field(default=None, min_length=1, max_length=200,
                                         description="the partner's own id of this entry, unique per organisation")

    @field_validator("hours")
    @classmethod
    def _two_decimals(cls, value: float) -> float:
        if abs(value * 100 - round(value * 100)) > 1e-6:
            raise ValueError("at most two decimals (0.01 h)")
        return round(value, 2)

    @field_validator("location_code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not LOCATION_CODE.fullmatch(value):
            raise ValueError("not a gazetteer code (2, 4, 6 or 8 digits)")
        return value

    @field_validator("evidence_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if len(url) > 2000:
                raise ValueError("a URL is at most 2000 characters")
            _http_url(url)
        return value

    @field_validator("description", "client_reference")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return clean_text(value)


@dataclass(slots=True)
class Entry:
    """An entry to log as the rules and the writes need it: already validated, flat, and cheap to make
    (a batch holds a thousand; a model object per item cost more than deciding the item)."""

    volunteer_id: uuid.UUID
    project_id: uuid.UUID
    activity_type: str
    date: dt.date
    hours: float
    location_code: str
    female: int = 0
    male: int = 0
    other: int = 0
    children: int = 0
    description: str | None = None
    evidence_urls: tuple[str, ...] = ()
    client_reference: str | None = None

    @classmethod
    def of(cls, d: ActivityCreate) -> "Entry":
        people = d.beneficiaries
        return cls(d.volunteer_id, d.project_id, d.activity_type, d.date, d.hours, d.location_code, people.female,
                   people.male, people.other, people.children, d.description, tuple(d.evidence_urls), d.client_reference)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_REQUIRED = frozenset(("volunteer_id", "project_id", "activity_type", "date", "hours", "location_code"))
_ALLOWED = frozenset(ActivityCreate.model_fields)
_PEOPLE = {"female": 1_000_000, "male": 1_000_000, "other": 1_000_000, "children": 3_000_000}


def plain_entry(item: Any) -> Entry | None:
    """The entry of a JSON item in the plain shape almost every item of a batch has (canonical ids, ISO
    date, numbers in range, text already clean), checked by hand; None for anything else, which the
    caller validates with `ActivityCreate` (the same values, and its exact error messages).

    Accepting here only what the model accepts unchanged keeps the two paths equal:
    tests/unit/test_activity_entries.py holds them to it."""
    if type(item) is not dict or not _REQUIRED <= item.keys() or not _ALLOWED >= item.keys():
        return None
    volunteer_id, project_id, day = item["volunteer_id"], item["project_id"], item["date"]
    activity_type, hours, code = item["activity_type"], item["hours"], item["location_code"]
    if not (type(volunteer_id) is str and _CANONICAL_UUID.fullmatch(volunteer_id)
            and type(project_id) is str and _CANONICAL_UUID.fullmatch(project_id)
            and type(activity_type) is str and 0 < len(activity_type) <= 60
            and type(day) is str and _ISO_DATE.fullmatch(day)
            and type(hours) in (int, float) and 0 < hours <= MAX_DAY_HOURS and abs(hours * 100 - round(hours * 100)) <= 1e-6
            and type(code) is str and len(code) <= 8 and LOCATION_CODE.fullmatch(code)):
        return None
    people = _plain_people(item["beneficiaries"]) if "beneficiaries" in item else (0, 0, 0, 0)
    description, reference = item.get("description"), item.get("client_reference")
    urls = item.get("evidence_urls", ())
    if (people is None or not _plain_text(description, 4000) or not _plain_text(reference, 200)
            or not _plain_urls(urls)):
        return None
    try:
        on = dt.date.fromisoformat(day)
    except ValueError:
        return None
    return Entry(uuid.UUID(volunteer_id), uuid.UUID(project_id), activity_type, on, round(float(hours), 2), code,
                 *people, description, tuple(urls), reference)


def _plain_people(value: Any) -> tuple[int, int, int, int] | None:
    if type(value) is not dict or not _PEOPLE.keys() >= value.keys():
        return None
    counts = []
    for name, most in _PEOPLE.items():
        count = value.get(name, 0)
        if type(count) is not int or not 0 <= count <= most:
            return None
        counts.append(count)
    return tuple(counts) if counts[3] <= counts[0] + counts[1] + counts[2] else None


def _plain_text(value: Any, most: int) -> bool:
    if value is None:
        return True
    if type(value) is not str or not 0 < len(value) <= most:
        return False
    try:
        return clean_text(value) == value
    except ValueError:
        return False


def _plain_urls(value: Any) -> bool:
    if type(value) not in (list, tuple) or len(value) > MAX_EVIDENCE_URLS:
        return False
    try:
        return all(type(url) is str and len(url) <= 2000 and _http_url(url) for url in value)
    except ValueError:
        return False


class ActivityPublic(SQLModel):
    id: uuid.UUID
    volunteer_id: uuid.UUID
    project_id: uuid.UUID
    program_id: uuid.UUID
    organization_id: uuid.UUID
    activity_type: str
    focus_area: str
    date: dt.date
    hours: float
    location_code: str
    beneficiaries: Beneficiaries
    description: str | None
    evidence_urls: list[str]
    client_reference: str | None
    status: Literal["submitted", "verified", "rejected", "voided"]
    approved_hours: float | None
    version: int
    conflict: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, row: Activity) -> "ActivityPublic":
        """From a row (an `Activity`, or the values of one written in bulk)."""
        if isinstance(row, dict):
            row = Activity.model_construct(**row)
        return cls.model_validate({
            **{name: getattr(row, name) for name in cls.model_fields if name != "beneficiaries"},
            "beneficiaries": Beneficiaries(female=row.beneficiaries_female, male=row.beneficiaries_male,
                                           other=row.beneficiaries_other, children=row.beneficiaries_children),
        })


class BatchRequest(SQLModel):
    """Items are validated one by one (a bad item is reported, not the batch), hence any JSON value here."""

    model_config = ConfigDict(extra="forbid")

    items: list[Any] = Field(max_length=MAX_BATCH, description=f"at most {MAX_BATCH} activities",
                             # Documented as what each item must be; checked item by item in the service.
                             schema_extra={"json_schema_extra": {"items": {"$ref": "#/components/schemas/ActivityCreate"}}})


class BatchItem(SQLModel):
    """One item's fate, by index; `updated` is a bulk verification's decision taken."""

    index: int
    status: Literal["created", "updated", "duplicate", "error"]
    id: uuid.UUID | None = None
    errors: list[dict[str, Any]] | None = None


class BatchSummary(SQLModel):
    dry_run: bool = False
    created: int = 0
    updated: int = 0
    ignored: int = 0
    errors: int = 0
    items: list[BatchItem] = []
