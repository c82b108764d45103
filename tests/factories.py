"""Test data for the registry's entities: create bodies, and the entities made through the API or on a session.

Three shapes for each entity (organisation, programme, project, volunteer, enrolment), overrides as keywords:
- `volunteer_body(**overrides)`: a valid create body (a dict), unique where the API wants uniqueness;
- through the API (asserts 201, returns the JSON): `create_org`, `create_program`, `create_project`,
  `register` (a volunteer), `create_enrollment`; `org_key` gives a client holding an organisation's key;
- on a session, by the registry's services (returns the row, nothing committed): `organization_row`,
  `program_row`, `project_row`, `volunteer_row`, `enrollment_row`, for tests on `registry_session`
  (tests/db.py); `national_scope()` and `organization_scope()` say who is calling.
"""
from __future__ import annotations

import random
import uuid
from contextlib import asynccontextmanager
from datetime import date, datetime, timezone

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.enrollments import service as enrollments
from services.registry.enrollments.models import Enrollment, EnrollmentCreate
from services.registry.organizations import service as organizations
from services.registry.organizations.models import Organization, OrganizationCreate
from services.registry.programs import service as programs
from services.registry.programs.models import Program, ProgramCreate
from services.registry.projects import service as projects
from services.registry.projects.models import Project, ProjectCreate
from services.registry.scope import Visibility, visibility
from services.registry.volunteers import service as volunteers
from services.registry.volunteers.models import Volunteer, VolunteerCreate
from shared.caller import GDY_ORGANIZATION_ID, SCOPES, CallerContext
from tests.harness import unique

WRITER = ["registry:read", "registry:write"]
KHMER_DIGITS = str.maketrans("0123456789", "០១២៣៤៥៦៧៨៩")


# ---- values ------------------------------------------------------------------------------------
def years_ago(years: int, month: int = 6, day: int = 15) -> str:
    """A birth date making a person `years` - 1 or `years` old today."""
    return date(date.today().year - years, month, day).isoformat()


def unique_phone() -> str:
    """A Cambodian mobile number as people type it (trunk 0, spaces): 097 xxx xxxx."""
    digits = f"{uuid.uuid4().int % 10**7:07d}"
    return f"097 {digits[:3]} {digits[3:]}"


def e164(phone: str) -> str:
    return "+855" + phone.replace(" ", "")[1:]


def khmer_tag() -> str:
    """A unique suffix in Khmer digits, so Khmer names stay Khmer and still tell tests apart."""
    return f"{uuid.uuid4().int % 10**8:08d}".translate(KHMER_DIGITS)


async def fresh_district(client: httpx.AsyncClient) -> str:
    """A district code no other test uses (real districts are numbered below 50), for a location import.
    Never `PP99`: tests name 1299 as a district that does not exist."""
    for _ in range(100):  # 1,225 codes to draw from, a handful taken per run
        code = f"{random.randint(1, 25):02d}{random.randint(50, 98):02d}"
        if (await client.get(f"/locations/{code}")).status_code == 404:
            return code
    raise AssertionError("no free district code in 100 draws")


def program_code() -> str:
    return f"T-{uuid.uuid4().hex[:10].upper()}"


# ---- bodies ------------------------------------------------------------------------------------
def organization_body(**overrides) -> dict:
    """An NGO below the national body."""
    return {"name": unique("org"), "kind": "ngo", "parent_id": GDY_ORGANIZATION_ID, **overrides}


def program_body(**overrides) -> dict:
    return {"code": program_code(), "name": unique("programme"), **overrides}


def project_body(program_id: str, organization_id: str, **overrides) -> dict:
    """A project of `organization_id` in `program_id`, from mid-January to the end of 2026 in two provinces."""
    return {
        "program_id": str(program_id), "organization_id": str(organization_id), "name": unique("project"),
        "name_km": "គម្រោង", "focus_areas": ["climate_change", "digital_literacy"], "location_codes": ["12", "17"],
        "start_date": "2026-01-15", "end_date": "2026-12-31", **overrides,
    }


def volunteer_body(**overrides) -> dict:
    """An adult volunteer with every personal field set to a unique value."""
    tag = uuid.uuid4().hex[:8]
    return {
        "name_latin": f"Sokha Chan{tag}",
        "name_km": f"សុខា{khmer_tag()}",
        "sex": "female",
        "date_of_birth": years_ago(21),
        "phone": unique_phone(),
        "email": f"sokha.{tag}@example.org",
        "residence_province": "12",
        "education_level": "higher",
        "disability": "no",
        "consent": {"given": True, "given_at": datetime.now(timezone.utc).isoformat()},
        "external_ids": [{"system": "test-ngo", "id": unique("ext")}],
        **overrides,
    }


def minor_body(**overrides) -> dict:
    """A 15- or 16-year-old: a guardian's consent is on record."""
    return volunteer_body(date_of_birth=years_ago(16), consent={
        "given": True, "guardian_name": f"Guardian {uuid.uuid4().hex[:6]}", "guardian_relation": "mother"}, **overrides)


def enrollment_body(project_id: str, **overrides) -> dict:
    return {"project_id": str(project_id), "started_on": "2026-02-01", **overrides}


# ---- through the API ---------------------------------------------------------------------------
async def _created(client: httpx.AsyncClient, path: str, body: dict) -> dict:
    answer = await client.post(path, json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def create_org(client: httpx.AsyncClient, parent_id: str = GDY_ORGANIZATION_ID, **overrides) -> dict:
    return await _created(client, "/organizations", organization_body(parent_id=parent_id, **overrides))


async def create_program(client: httpx.AsyncClient, **overrides) -> dict:
    """Needs a national key: programmes are national."""
    return await _created(client, "/programs", program_body(**overrides))


async def create_project(client: httpx.AsyncClient, organization_id: str, program_id: str | None = None, **overrides) -> dict:
    """A project of `organization_id`; in a new programme (so `client` must hold a national key) unless `program_id` is given."""
    program_id = program_id or (await create_program(client))["id"]
    return await _created(client, "/projects", project_body(program_id, organization_id, **overrides))


@asynccontextmanager
async def org_key(stack, admin: httpx.AsyncClient, organization_id: str, scopes=WRITER):
    """A client of the gateway holding a fresh, non-national key of the organisation."""
    created = await _created(admin, "/admin/api-keys", {"name": unique("key"), "organization_id": organization_id, "scopes": scopes})
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {created['key']}"},
                                 timeout=120) as client:
        yield client


async def register(client: httpx.AsyncClient, **overrides) -> dict:
    return await _created(client, "/volunteers", volunteer_body(**overrides))


async def create_enrollment(client: httpx.AsyncClient, volunteer_id: str, project_id: str, **overrides) -> dict:
    return await _created(client, f"/volunteers/{volunteer_id}/enrollments", enrollment_body(project_id, **overrides))


# ---- on a session, through the service ---------------------------------------------------------
def national_scope() -> Visibility:
    """What a national key with every scope sees: everything."""
    caller = CallerContext("test-national", uuid.UUID(GDY_ORGANIZATION_ID), frozenset(SCOPES), national=True)
    return Visibility(caller, None)


async def organization_scope(session: AsyncSession, organization_id: uuid.UUID) -> Visibility:
    """What a key of `organization_id` with every scope sees: its organisation and those below it."""
    return await visibility(CallerContext("test-org", organization_id, frozenset(SCOPES)), session)


async def organization_row(session: AsyncSession, scope: Visibility, **overrides) -> Organization:
    row = await organizations.create_organization(session, scope, OrganizationCreate(**organization_body(**overrides)))
    await session.flush()  # a constraint the row breaks fails here, not in the test's next query
    return row


async def program_row(session: AsyncSession, **overrides) -> Program:
    return await programs.create_program(session, national_scope().caller, ProgramCreate(**program_body(**overrides)))


async def project_row(session: AsyncSession, scope: Visibility, organization_id: uuid.UUID,
                      program_id: uuid.UUID | None = None, **overrides) -> Project:
    program_id = program_id or (await program_row(session)).id
    data = ProjectCreate(**project_body(program_id, organization_id, **overrides))
    row = await projects.create_project(session, scope, data)
    await session.flush()  # as above
    return row


async def volunteer_row(session: AsyncSession, scope: Visibility, **overrides) -> Volunteer:
    return await volunteers.register(session, scope, VolunteerCreate(**volunteer_body(**overrides)))


async def enrollment_row(session: AsyncSession, scope: Visibility, volunteer_id: uuid.UUID, project_id: uuid.UUID,
                         **overrides) -> Enrollment:
    return await enrollments.enrol(session, scope, volunteer_id, EnrollmentCreate(**enrollment_body(project_id, **overrides)))
