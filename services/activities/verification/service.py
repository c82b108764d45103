"""Rules of verification and correction.

Only the project's organisation or one above it decides on an entry (another organisation gets a 404,
as for reading; the volunteer's own organisation, which may read the entry, gets a 403). A submitted
entry is verified (all or part of its hours), rejected or voided; a verified one is locked, except
that it may be voided; the same decision sent again changes nothing (a retried request is harmless).
A correction of a submitted entry keeps the version it replaces and passes the rules of a new entry
again. Every change is published through the outbox in the request's transaction.
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities import service as activities
from services.activities.activities.models import Activity, ActivityCreate, ActivityPublic, BatchItem, BatchSummary
from services.activities.registry_view.client import RegistryClient
from services.activities.scope import Visibility
from services.activities.verification import repository
from services.activities.verification.models import ActivityCorrection, BulkDecision
from shared.db import utcnow
from shared.errors import NotFound, ProblemError, validation_errors
from shared.events import (
    ACTIVITY_CORRECTED, ACTIVITY_REJECTED, ACTIVITY_VERIFIED, ACTIVITY_VOIDED, CloudEvent,
)
from shared.outbox import add_events

Action = Literal["verify", "reject", "void"]
_OUTCOME = {"verify": ("verified", ACTIVITY_VERIFIED), "reject": ("rejected", ACTIVITY_REJECTED),
            "void": ("voided", ACTIVITY_VOIDED)}
# What each decision may follow; the decision's own outcome is a repeat (no change), anything else a 409.
_FROM = {"verify": {"submitted"}, "reject": {"submitted"}, "void": {"submitted", "verified"}}
_WHY_NOT = {
    ("reject", "verified"): "a verified entry is locked: void it (with a reason) instead",
    ("verify", "rejected"): "a rejected entry is final: the submitter logs a new one",
    ("void", "rejected"): "a rejected entry is already out of every figure",
}


class Refused(Exception):
    """A decision that cannot be taken: its status, the field at fault (relative to the request) and why."""

    def __init__(self, status: int, field: str, msg: str):
        super().__init__(msg)
        self.status, self.field, self.msg = status, field, msg


@dataclass
class Decision:
    action: Action
    approved_hours: float | None = None
    reason: str | None = None


def _check(row: Activity | None, scope: Visibility, d: Decision) -> bool:
    """True when `d` changes the entry, False when the entry already stands so decided; else Refused."""
    if row is None or not scope.can_see(row):
        raise Refused(404, "id", "activity not found")
    if scope.orgs is not None and row.organization_id not in scope.orgs:
        raise Refused(403, "id", "only the project's organisation, or one above it, decides on this activity")
    status, _ = _OUTCOME[d.action]
    if d.approved_hours is not None and d.approved_hours > row.hours:
        raise Refused(422, "approved_hours", f"at most the {row.hours:g} hours claimed")
    if row.status == status:
        if d.action == "verify" and (d.approved_hours or row.hours) != row.approved_hours:
            raise Refused(409, "approved_hours", f"already verified with {row.approved_hours:g} approved hours")
        return False
    if row.status not in _FROM[d.action]:
        raise Refused(409, "id", _WHY_NOT.get((d.action, row.status), f"the activity is {row.status}"))
    return True


def _apply(row: Activity, d: Decision, now) -> CloudEvent:
    status, event_type = _OUTCOME[d.action]
    row.status = status
    if d.action == "verify":
        row.approved_hours = d.approved_hours or row.hours
    row.status_reason = d.reason
    row.decided_at = now
    row.revision += 1
    row.updated_at = now
    return activities.activity_event(event_type, row)


def _problem(refused: Refused, location: str) -> ProblemError:
    if refused.status == 404:
        return NotFound("activity")
    loc = ["path", "activity_id"] if refused.field == "id" else [location, refused.field]
    return ProblemError(refused.status, refused.msg, errors=[{"loc": loc, "msg": refused.msg}])


async def decide(session: AsyncSession, scope: Visibility, activity_id: uuid.UUID, d: Decision) -> Activity:
    """One decision on one entry (verify, reject or void)."""
    row = (await repository.locked(session, [activity_id])).get(activity_id)
    try:
        changes = _check(row, scope, d)
    except Refused as refused:
        raise _problem(refused, "body") from refused
    if changes:
        await add_events(session, [_apply(row, d, utcnow())])
    return row


# ---- bulk --------------------------------------------------------------------------------------

def _parse(item: Any) -> tuple[BulkDecision | None, list[dict]]:
    if not isinstance(item, dict):
        return None, [{"loc": [], "msg": "an item must be a JSON object"}]
    try:
        parsed = BulkDecision.model_validate(item)
    except ValidationError as exc:
        return None, validation_errors(list(exc.errors()))
    if parsed.decision == "reject" and not parsed.reason:
        return None, [{"loc": ["reason"], "msg": "required to reject"}]
    if parsed.decision == "reject" and parsed.approved_hours is not None:
        return None, [{"loc": ["approved_hours"], "msg": "only a verification approves hours"}]
    return parsed, []


async def decide_many(session: AsyncSession, scope: Visibility, items: Sequence[Any], dry_run: bool) -> BatchSummary:
    """Up to 1000 decisions: each item decided or reported by index, as batches are (§4 summary).
    Another organisation's activity is an item error "not found", like one that does not exist."""
    parsed: dict[int, BulkDecision] = {}
    summary = BatchSummary(dry_run=dry_run)
    results: dict[int, BatchItem] = {}
    first_of: dict[uuid.UUID, int] = {}
    for index, item in enumerate(items):
        decision, errors = _parse(item)
        if decision is not None and decision.id in first_of:
            errors = [{"loc": ["id"], "msg": f"item {first_of[decision.id]} already decides this activity"}]
        if errors:
            results[index] = BatchItem(index=index, status="error", errors=errors)
            continue
        first_of[decision.id] = index
        parsed[index] = decision
    rows = await repository.locked(session, [d.id for d in parsed.values()])
    now, events = utcnow(), []
    for index, item in parsed.items():
        row = rows.get(item.id)
        d = Decision(item.decision, item.approved_hours, item.reason)
        try:
            changes = _check(row, scope, d)
        except Refused as refused:
            msg = "not found" if refused.status == 404 else refused.msg
            results[index] = BatchItem(index=index, status="error", errors=[{"loc": [refused.field], "msg": msg}])
            continue
        if changes and not dry_run:
            events.append(_apply(row, d, now))
        results[index] = BatchItem(index=index, status="updated" if changes else "duplicate", id=row.id)
    await add_events(session, events)
    for index in sorted(results):
        item = results[index]
        summary.items.append(item)
        if item.status == "error":
            summary.errors += 1
        elif item.status == "updated":
            summary.updated += 1
        else:
            summary.ignored += 1
    return summary


# ---- corrections -------------------------------------------------------------------------------

_CORRECTABLE = ("activity_type", "date", "hours", "location_code", "description", "evidence_urls")


def _as_created(row: Activity) -> dict:
    """The entry as a new one would be sent, so a correction passes exactly the rules of a new entry."""
    public = ActivityPublic.of(row)
    return {"volunteer_id": row.volunteer_id, "project_id": row.project_id, "beneficiaries": public.beneficiaries,
            **{name: getattr(row, name) for name in _CORRECTABLE}}


async def correct(session: AsyncSession, scope: Visibility, registry: RegistryClient, activity_id: uuid.UUID,
                  patch: ActivityCorrection) -> Activity:
    row = (await repository.locked(session, [activity_id])).get(activity_id)
    if row is None or not scope.can_see(row):
        raise NotFound("activity")
    if row.status != "submitted":
        why = "a verified entry is locked: void it and log a new one" if row.status == "verified" else f"the activity is {row.status}"
        raise ProblemError(409, why, slug="locked", errors=[{"loc": ["path", "activity_id"], "msg": why}])
    current = _as_created(row)
    try:
        data = ActivityCreate.model_validate({**current, **patch.model_dump(exclude_unset=True)})
    except ValidationError as exc:
        errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in validation_errors(list(exc.errors()))]
        raise ProblemError(422, "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors[:5]),
                           errors=errors) from exc
    if data.model_dump() == ActivityCreate.model_validate(current).model_dump():
        return row  # nothing changes: no new version
    checked = await activities.check_correction(session, scope.caller, registry, data, row.id)
    if checked.errors:
        errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in checked.errors]
        raise ProblemError(422, "; ".join(f"{e['loc'][1]}: {e['msg']}" for e in errors[:5]), errors=errors)
    if checked.unchecked:
        raise ProblemError(503, "the registry is unavailable to check this correction's references; retry shortly",
                           headers={"Retry-After": activities.RETRY_AFTER_S},
                           errors=[{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in checked.unchecked])
    repository.add_version(session, row.id, row.version, ActivityPublic.of(row).model_dump(mode="json"))
    for name in _CORRECTABLE:
        setattr(row, name, getattr(data, name))
    row.focus_area = checked.values["focus_area"]
    for name in ("female", "male", "other", "children"):
        setattr(row, f"beneficiaries_{name}", getattr(data.beneficiaries, name))
    row.version += 1
    row.revision += 1
    row.updated_at = utcnow()
    await add_events(session, [activities.activity_event(ACTIVITY_CORRECTED, row)])
    return row


async def versions(session: AsyncSession, scope: Visibility, activity_id: uuid.UUID) -> list[ActivityPublic]:
    """Every version, oldest first; the last is the entry as it stands."""
    row = await activities.get_visible(session, scope, activity_id)
    earlier = [ActivityPublic.model_validate(v.state) for v in await repository.versions(session, activity_id)]
    return [*earlier, ActivityPublic.of(row)]
