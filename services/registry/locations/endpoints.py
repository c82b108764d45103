"""HTTP surface of the gazetteer: search and read, and the national CSV import."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.datastructures import UploadFile

from services.registry.locations import repository, service
from services.registry.locations.models import ImportSummaryPublic, LocationLevel, LocationPublic
from shared.caller import Caller, require_scope
from shared.errors import PROBLEM_RESPONSES, ProblemError
from shared.http import body_limit
from shared.pagination import Cursor, Limit, Page
from shared.service import SessionDep
from shared.times import UtcTime

router = APIRouter(prefix="/locations", tags=["locations"], responses=PROBLEM_RESPONSES)

CodeParam = Annotated[str, Path(pattern=r"^[0-9]{1,8}$", description="Gazetteer code (2, 4, 6 or 8 digits)")]

_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "UTF-8 CSV with the header `code,level,name_en,name_km,parent_code` (districts, communes, "
                       "villages; parents before children), as the body or as the multipart field `file`.",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}},
            },
        },
    }
}


@router.get("", response_model=Page[LocationPublic], dependencies=[require_scope("registry:read")])
async def list_locations(
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    level: LocationLevel | None = None,
    parent: Annotated[str | None, Query(pattern=r"^[0-9]{2}([0-9]{2}){0,2}$", description="Parent code: children of it")] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200, description="Name, Latin or Khmer script")] = None,
    updated_since: UtcTime | None = None,
):
    rows = await repository.list_page(
        session,
        limit=limit,
        after_code=service.decode_cursor(cursor) if cursor else None,
        level=level,
        parent_code=parent,
        search_key=service.query_key(q) if q is not None else None,
        updated_since=updated_since,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [LocationPublic.model_validate(r, from_attributes=True) for r in rows],
        "next_cursor": service.encode_cursor(rows[-1].code) if more else None,
    }


@router.get("/{code}", response_model=LocationPublic, dependencies=[require_scope("registry:read")])
async def get_location(code: CodeParam, session: SessionDep):
    return await service.get_location(session, code)


@router.post("/import", response_model=ImportSummaryPublic, response_model_exclude_none=True,
             dependencies=[require_scope("registry:write")], openapi_extra=_IMPORT_BODY,
             summary="Import districts, communes and villages from CSV (national keys)")
async def import_locations(request: Request, session: SessionDep, caller: Caller, dry_run: bool = False):
    raw = await _csv_bytes(request)
    summary = await service.import_locations(session, caller, service.decode_csv(raw), dry_run=dry_run)
    return summary.as_dict()


async def _csv_bytes(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("text/csv", "text/plain"):
        return await request.body()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10, max_part_size=body_limit(request.scope["path"]))
        upload = form.get("file")
        if isinstance(upload, UploadFile):
            return await upload.read()
        if isinstance(upload, str):
            # Starlette decodes plain fields, falling back to Latin-1 on bad UTF-8: the encoding check
            # needs the raw bytes, which only a file part keeps.
            raise ProblemError(422, "send the CSV as a file part (with a filename), e.g. curl -F 'file=@places.csv'",
                               errors=[{"loc": ["body", "file"], "msg": "must be a file part"}])
        raise ProblemError(422, "the multipart body has no field 'file'", errors=[{"loc": ["body", "file"], "msg": "field required"}])
    raise ProblemError(415, "send the CSV as Content-Type: text/csv, or as the multipart/form-data field 'file'")
