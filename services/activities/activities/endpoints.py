"""HTTP surface of activity logging: one entry, a batch, the list and one entry by id."""
from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from services.activities.activities import repository, service
from services.activities.activities.models import ActivityCreate, ActivityPublic, BatchRequest, BatchSummary
from services.activities.registry_view.client import RegistryClient
from services.activities.scope import VisibilityDep
from shared.caller import Caller, require_scope
from shared.errors import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemError
from shared.idempotency import IdempotencyDep
from shared.pagination import Cursor, Limit, Page
from shared.service import SessionDep
from shared.times import UtcTime

router = APIRouter(prefix="/activities", tags=["activities"], responses=PROBLEM_RESPONSES)


def registry_client(request: Request) -> RegistryClient:
    return request.app.state.registry


Registry = Annotated[RegistryClient, Depends(registry_client)]
UNAVAILABLE = {503: {"model": Problem, "content": {PROBLEM_JSON: {}},
                     "description": "The registry could not be asked about a reference this service does not know yet: retry"}}


@router.post(
    "", status_code=201, response_model=ActivityPublic, dependencies=[require_scope("activities:write")],
    summary="Log an activity (a client_reference already used by your organisation answers 200 with that entry)",
    responses={200: {"model": ActivityPublic, "description": "The entry this client_reference already names"}, **UNAVAILABLE},
)
async def log_activity(body: ActivityCreate, session: SessionDep, caller: Caller,
                       registry: Registry, idem: IdempotencyDep):
    created = True

    async def make() -> ActivityPublic:
        nonlocal created
        public, created = await service.record(session, caller, registry, body)
        return public

    answer = await idem.create(session, body, make, lambda public: public)
    if isinstance(answer, Response):
        return answer  # the replay of the answer to an earlier request with this Idempotency-Key
    # Serialised by the model itself, once: FastAPI would dump it, validate it again and encode the dump.
    return Response(answer.model_dump_json(), status_code=201 if created else 200, media_type="application/json")


@router.post(
    "/batch", response_model=BatchSummary, response_model_exclude_none=True,
    dependencies=[require_scope("activities:write")],
    summary=f"Log up to 1000 activities: good items are taken, bad ones reported by index; "
            "a re-sent batch creates nothing twice (client_reference)",
)
async def log_batch(body: BatchRequest, session: SessionDep, caller: Caller, registry: Registry, idem: IdempotencyDep,
                    dry_run: Annotated[bool, Query(description="validate everything, change nothing")] = False):
    async def make() -> dict:
        return await service.record_batch(session, caller, registry, body.items, dry_run)

    # A dry run changes nothing, so there is nothing to replay (and a real run with its key must still run).
    summary = await (make() if dry_run else idem.create(session, body, make, lambda made: made, status_code=200))
    if isinstance(summary, Response):
        return summary  # the replay of the answer to an earlier request with this Idempotency-Key
    # Serialised directly: re-validating 1000 items against the response model costs more than the rest.
    # default=str: ids read back by asyncpg are its own UUID type, which orjson does not know.
    return Response(orjson.dumps(summary, default=str), media_type="application/json")


@router.get("", response_model=Page[ActivityPublic], dependencies=[require_scope("activities:read")],
            summary="List activities (of your organisation's tree, as the project's or the volunteer's organisation)")
async def list_activities(
    session: SessionDep,
    scope: VisibilityDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    volunteer_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    organization_id: Annotated[uuid.UUID | None, Query(description="the project's organisation")] = None,
    status: Literal["submitted", "verified", "rejected", "voided"] | None = None,
    date_from: Annotated[date | None, Query(alias="from", description="first local date")] = None,
    date_to: Annotated[date | None, Query(alias="to", description="last local date")] = None,
    updated_since: UtcTime | None = None,
):
    if date_from is not None and date_to is not None and date_to < date_from:
        raise ProblemError(422, "to is before from", errors=[{"loc": ["query", "to"], "msg": "before from"}])
    filters = repository.ActivityFilters(volunteer_id=volunteer_id, project_id=project_id, organization_id=organization_id,
                                         status=status, date_from=date_from, date_to=date_to, updated_since=updated_since)
    return await service.search(session, scope, limit, cursor, filters)


@router.get("/{activity_id}", response_model=ActivityPublic, dependencies=[require_scope("activities:read")],
            summary="One activity (another organisation's is a 404)")
async def get_activity(activity_id: uuid.UUID, session: SessionDep, scope: VisibilityDep):
    return ActivityPublic.of(await service.get_visible(session, scope, activity_id))
