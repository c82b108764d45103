"""Volunteers: the database rows (volunteer, external id) and the wire shapes (create, update, public).

Enumerations are stored as plain strings (no PostgreSQL ENUM types to migrate); the wire models
hold the allowed values. Names are stored as given (NFC) next to their normalised search keys.
"""
from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from services.registry.normalize import normalize_phone
from services.registry.volunteers.rules import is_plausible_email
from shared.db import timestamp_field
from shared.text import clean_text
from shared.times import as_utc

Sex = Literal["female", "male", "other", "undisclosed"]
EducationLevel = Literal["none", "primary", "lower_secondary", "upper_secondary", "vocational", "higher", "undisclosed"]
Disability = Literal["yes", "no", "undisclosed"]

NAME_MAX = 200
GUARDIAN_RELATION_MAX = 100
EXTERNAL_SYSTEM_MAX = 100
EXTERNAL_ID_MAX = 200
MAX_EXTERNAL_IDS = 20


class Volunteer(SQLModel, table=True):
    __tablename__ = "volunteers"
    __table_args__ = (
        Index("ix_volunteers_updated_at_id", "updated_at", "id"),
        # Duplicate detection and import matching look names up together with the birth date.
        Index("ix_volunteers_latin_key_dob", "name_latin_key", "date_of_birth"),
        Index("ix_volunteers_km_key_dob", "name_km_key", "date_of_birth"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name_latin: str | None = Field(default=None, max_length=NAME_MAX)
    name_km: str | None = Field(default=None, max_length=NAME_MAX)
    # services.registry.normalize.normalize_name of each name: search and duplicate matching only.
    name_latin_key: str | None = Field(default=None, max_length=2 * NAME_MAX)
    name_km_key: str | None = Field(default=None, max_length=2 * NAME_MAX)
    sex: str = Field(max_length=20)
    date_of_birth: date
    phone: str | None = Field(default=None, max_length=20, index=True)  # E.164
    email: str | None = Field(default=None, max_length=254)
    residence_province: str = Field(max_length=2, index=True)
    residence_commune: str | None = Field(default=None, max_length=6)
    education_level: str = Field(default="undisclosed", max_length=20)
    disability: str = Field(default="undisclosed", max_length=20)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id", index=True)
    consent_given: bool = False
    consent_given_at: datetime | None = timestamp_field(nullable=True, default_now=False)
    guardian_name: str | None = Field(default=None, max_length=NAME_MAX)
    guardian_relation: str | None = Field(default=None, max_length=GUARDIAN_RELATION_MAX)
    erased: bool = False
    merged_into: uuid.UUID | None = Field(default=None, foreign_key="volunteers.id", index=True)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class VolunteerExternalId(SQLModel, table=True):
    """An id the volunteer has in a partner's system; (system, id) names one volunteer at most."""

    __tablename__ = "volunteer_external_ids"

    system: str = Field(primary_key=True, max_length=EXTERNAL_SYSTEM_MAX)
    external_id: str = Field(primary_key=True, max_length=EXTERNAL_ID_MAX)
    volunteer_id: uuid.UUID = Field(foreign_key="volunteers.id", index=True)
    created_at: datetime = timestamp_field()


# ---- wire shapes -------------------------------------------------------------------------------

def _clean(value: str | None) -> str | None:
    try:
        return clean_text(value)
    except ValueError as exc:
        raise PydanticCustomError("text", str(exc)) from exc


def _utc(value: datetime | None) -> datetime | None:
    try:
        return None if value is None else as_utc(value)
    except ValueError as exc:
        raise PydanticCustomError("datetime", str(exc)) from exc


def _code(value: str | None, digits: int, level: str) -> str | None:
    # isascii: str.isdigit alone accepts Khmer digits, which gazetteer codes never use.
    if value is not None and not (len(value) == digits and value.isascii() and value.isdigit()):
        raise PydanticCustomError("code", f"must be a {digits}-digit {level} code")
    return value


class _Input(SQLModel):
    """Request bodies hold only what the client owns: unknown and server-owned fields are a 422."""

    model_config = ConfigDict(extra="forbid")


class ExternalIdIn(_Input):
    system: str = Field(min_length=1, max_length=EXTERNAL_SYSTEM_MAX)
    id: str = Field(min_length=1, max_length=EXTERNAL_ID_MAX)

    @field_validator("system", "id")
    @classmethod
    def _text(cls, value: str) -> str:
        return _clean(value)


class ConsentIn(_Input):
    given: bool
    given_at: datetime | None = None
    guardian_name: str | None = Field(default=None, max_length=NAME_MAX)
    guardian_relation: str | None = Field(default=None, max_length=GUARDIAN_RELATION_MAX)

    @field_validator("guardian_name", "guardian_relation")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _clean(value)

    @field_validator("given_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class ConsentUpdate(ConsentIn):
    """The same fields and checks, each optional in a PATCH."""

    given: bool | None = None


class _PersonFields(_Input):
    """Validators shared by create and update (a field left out of an update is not validated)."""

    @field_validator("name_latin", "name_km", check_fields=False)
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return _clean(value)

    @field_validator("phone", check_fields=False)
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalize_phone(value)
        except ValueError as exc:
            raise PydanticCustomError("phone", str(exc)) from exc

    @field_validator("email", check_fields=False)
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not is_plausible_email(value):
            raise PydanticCustomError("email", "not a valid email address")
        return value

    @field_validator("residence_province", check_fields=False)
    @classmethod
    def _province(cls, value: str | None) -> str | None:
        return _code(value, 2, "province")

    @field_validator("residence_commune", check_fields=False)
    @classmethod
    def _commune(cls, value: str | None) -> str | None:
        return _code(value, 6, "commune")

    @field_validator("external_ids", check_fields=False)
    @classmethod
    def _unique_ids(cls, value: list[ExternalIdIn] | None) -> list[ExternalIdIn] | None:
        seen = set()
        for item in value or ():
            if (item.system, item.id) in seen:
                raise PydanticCustomError("external_ids", "the same {system, id} pair is listed twice")
            seen.add((item.system, item.id))
        return value


class VolunteerCreate(_PersonFields):
    """At least one of the names is required: checked with the other rules (service.name_keys)."""

    name_latin: str | None = Field(default=None, max_length=NAME_MAX)
    name_km: str | None = Field(default=None, max_length=NAME_MAX)
    sex: Sex
    date_of_birth: date
    phone: str | None = Field(default=None, max_length=40)
    email: str | None = Field(default=None, max_length=254)
    residence_province: str
    residence_commune: str | None = None
    education_level: EducationLevel = "undisclosed"
    disability: Disability = "undisclosed"
    organization_id: uuid.UUID | None = None
    consent: ConsentIn
    external_ids: list[ExternalIdIn] = Field(default_factory=list, max_length=MAX_EXTERNAL_IDS)


class VolunteerUpdate(_PersonFields):
    """PATCH: only the fields sent change; `null` clears an optional field; `external_ids` replaces the list."""

    name_latin: str | None = Field(default=None, max_length=NAME_MAX)
    name_km: str | None = Field(default=None, max_length=NAME_MAX)
    sex: Sex | None = None
    date_of_birth: date | None = None
    phone: str | None = Field(default=None, max_length=40)
    email: str | None = Field(default=None, max_length=254)
    residence_province: str | None = None
    residence_commune: str | None = None
    education_level: EducationLevel | None = None
    disability: Disability | None = None
    organization_id: uuid.UUID | None = None
    consent: ConsentUpdate | None = None
    external_ids: list[ExternalIdIn] | None = Field(default=None, max_length=MAX_EXTERNAL_IDS)


# Fields that may not be cleared with an explicit null in a PATCH.
REQUIRED_ON_UPDATE = ("sex", "date_of_birth", "residence_province", "education_level", "disability",
                      "organization_id", "consent", "external_ids")


class ConsentPublic(SQLModel):
    given: bool
    given_at: datetime | None
    guardian_name: str | None
    guardian_relation: str | None


class ExternalIdPublic(SQLModel):
    system: str
    id: str


class VolunteerPublic(SQLModel):
    id: uuid.UUID
    name_latin: str | None
    name_km: str | None
    sex: Sex
    date_of_birth: date
    phone: str | None
    email: str | None
    residence_province: str
    residence_commune: str | None
    education_level: EducationLevel
    disability: Disability
    organization_id: uuid.UUID
    consent: ConsentPublic
    external_ids: list[ExternalIdPublic]
    erased: bool
    merged_into: uuid.UUID | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Volunteer, external_ids: list[tuple[str, str]]) -> "VolunteerPublic":
        return cls(
            id=row.id, name_latin=row.name_latin, name_km=row.name_km, sex=row.sex, date_of_birth=row.date_of_birth,
            phone=row.phone, email=row.email, residence_province=row.residence_province,
            residence_commune=row.residence_commune, education_level=row.education_level, disability=row.disability,
            organization_id=row.organization_id,
            consent=ConsentPublic(given=row.consent_given, given_at=row.consent_given_at,
                                  guardian_name=row.guardian_name, guardian_relation=row.guardian_relation),
            external_ids=[ExternalIdPublic(system=s, id=i) for s, i in sorted(external_ids)],
            erased=row.erased, merged_into=row.merged_into, created_at=row.created_at, updated_at=row.updated_at,
        )


class MergeRequest(_Input):
    duplicate_id: uuid.UUID


class DuplicatePair(SQLModel):
    volunteer_ids: list[uuid.UUID]
    reasons: list[Literal["phone", "name_and_birth_date"]]


# Import summaries are plain pydantic models: a 50,000-row answer is built and serialised once, fast.
class ImportItem(BaseModel):
    index: int
    status: Literal["created", "updated", "duplicate", "error"]
    id: uuid.UUID | None = None
    errors: list[dict] | None = None


class ImportSummary(BaseModel):
    dry_run: bool
    created: int
    updated: int
    ignored: int
    errors: int
    message: str
    items: list[ImportItem]
