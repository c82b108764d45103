"""HTTP surface of volunteers: CRUD, search, duplicates, merge, erasure and CSV import."""
from __future__ import annotations

import unicodedata
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from services.registry.scope import VisibilityDep
from services.registry.volunteers import importer, service
from services.registry.volunteers.models import (
    DuplicatePair, ImportSummary, MergeRequest, VolunteerCreate, VolunteerPublic, VolunteerUpdate,
)
from shared.caller import require_scope
from shared.errors import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemError
from shared.idempotency import IdempotencyDep
from shared.pagination import Cursor, Limit, Page
from shared.service import SessionDep
from shared.times import UtcTime

router = APIRouter(prefix="/volunteers", tags=["volunteers"], responses=PROBLEM_RESPONSES)


def conflict(description: str) -> dict:
    return {409: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": description}}


def text_query(value: str | None, name: str) -> str | None:
    """Free-text query parameters refuse control characters (PostgreSQL cannot even compare a NUL)."""
    if value is not None and any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ProblemError(422, f"{name}: control characters are not allowed",
                           errors=[{"loc": ["query", name], "msg": "control characters are not allowed"}])
    return value


@router.post("", status_code=201, response_model=VolunteerPublic, dependencies=[require_scope("registry:write")],
             summary="Register a volunteer", responses=conflict("An external id belongs to another volunteer"))
async def register_volunteer(body: VolunteerCreate, session: SessionDep, scope: VisibilityDep, idem: IdempotencyDep):
    return await idem.create(session, body, lambda: service.register(session, scope, body),
                             lambda row: service.public(session, row))


@router.get("", response_model=Page[VolunteerPublic], dependencies=[require_scope("registry:read")],
            summary="List and search volunteers (merged duplicates are left out; erased records stay, for sync)")
async def list_volunteers(
    session: SessionDep,
    scope: VisibilityDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    organization_id: uuid.UUID | None = None,
    province: Annotated[str | None, Query(pattern=r"^[0-9]{2}$", description="Residence province code")] = None,
    program_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200, description="Name (Latin or Khmer, any part) or phone")] = None,
    external_system: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    external_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    updated_since: UtcTime | None = None,
):
    return await service.search(
        session, scope, limit, cursor, q,
        organization_id=organization_id, province=province, program_id=program_id, project_id=project_id,
        external_system=text_query(external_system, "external_system"), external_id=text_query(external_id, "external_id"),
        updated_since=updated_since,
    )


@router.get("/duplicates", response_model=Page[DuplicatePair], dependencies=[require_scope("registry:read")],
            summary="Probable duplicates: pairs sharing a phone, or a normalised name and a birth date")
async def list_duplicates(session: SessionDep, scope: VisibilityDep, limit: Limit = 50, cursor: Cursor = None):
    return await service.duplicates(session, scope, limit, cursor)


@router.post(
    "/import", response_model=ImportSummary, dependencies=[require_scope("registry:write")],
    summary="Import volunteers from CSV (UTF-8, header of wire names; rows matched on external id)",
    openapi_extra={"requestBody": {"required": True, "content": {
        "text/csv": {"schema": {"type": "string"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                           "required": ["file"]}},
    }}},
)
async def import_volunteers(request: Request, session: SessionDep, scope: VisibilityDep, dry_run: bool = False):
    job = await importer.start(session, scope, await _csv_bytes(request))
    for chunk in job.chunks():
        await job.apply(session, chunk, dry_run=dry_run)
    # Serialised directly: re-validating 50,000 items against the response model would cost seconds.
    return Response(job.summary(dry_run).model_dump_json(exclude_none=True), media_type="application/json")


async def _csv_bytes(request: Request) -> bytes:
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media in ("text/csv", "text/plain"):
        return await request.body()
    if media == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ProblemError(422, "the multipart body needs the CSV in a file field named 'file'",
                               errors=[{"loc": ["body", "file"], "msg": "missing file"}])
        return await upload.read()
    raise ProblemError(415, "send the CSV as text/csv, or as multipart/form-data with a field named 'file'")


@router.get("/{volunteer_id}", response_model=VolunteerPublic, dependencies=[require_scope("registry:read")],
            summary="One volunteer (an erased one has its personal fields null; a merged one names its survivor)")
async def get_volunteer(volunteer_id: uuid.UUID, session: SessionDep, scope: VisibilityDep):
    return await service.public(session, await service.get_visible(session, scope, volunteer_id))


# PATCH and merge answer with the whole person: a write-only key must not read one back through them.
READ_WRITE = [require_scope("registry:write"), require_scope("registry:read")]


@router.patch("/{volunteer_id}", response_model=VolunteerPublic, dependencies=READ_WRITE,
              summary="Change some fields (null clears an optional one; external_ids replaces the list)",
              responses=conflict("Erased or merged volunteer, or an external id belongs to another volunteer"))
async def update_volunteer(volunteer_id: uuid.UUID, body: VolunteerUpdate, session: SessionDep, scope: VisibilityDep):
    return await service.public(session, await service.update(session, scope, volunteer_id, body))


@router.delete("/{volunteer_id}", status_code=204, dependencies=[require_scope("registry:write")],
               summary="Erase a volunteer's personal data (the pseudonymous record stays for statistics)")
async def erase_volunteer(volunteer_id: uuid.UUID, session: SessionDep, scope: VisibilityDep):
    await service.erase(session, scope, volunteer_id)
    return Response(status_code=204)


@router.post("/{volunteer_id}/merge", response_model=VolunteerPublic, dependencies=READ_WRITE,
             summary="Merge a duplicate into this volunteer (it keeps both records' external ids and enrolments)",
             responses=conflict("One of the two is erased or already merged"))
async def merge_volunteers(volunteer_id: uuid.UUID, body: MergeRequest, session: SessionDep, scope: VisibilityDep):
    return await service.public(session, await service.merge(session, scope, volunteer_id, body.duplicate_id))
