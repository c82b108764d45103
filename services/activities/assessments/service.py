"""Rules for assessments: complete scores in range, a computed total, one current assessment per
volunteer, instrument and phase (a second one must say which it replaces), published on record."""
from __future__ import annotations

import logging
import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.activities.activities.service import RETRY_AFTER_S, local_today
from services.activities.assessments import repository
from services.activities.assessments.instruments import INSTRUMENTS, Instrument
from services.activities.assessments.models import Assessment, AssessmentCreate
from services.activities.registry_view import lookup
from services.activities.registry_view import repository as registry_view
from services.activities.registry_view.client import RegistryClient
from services.activities.registry_view.lookup import Needs
from services.activities.registry_view.models import VolunteerView
from services.activities.scope import Visibility
from shared.caller import CallerContext
from shared.db import utcnow
from shared.errors import NotFound, ProblemError
from shared.events import ASSESSMENT_RECORDED, ASSESSMENT_REPLACED, AssessmentChanged, new_event
from shared.logs import request_id_var
from shared.outbox import add_event

log = logging.getLogger(__name__)


def _invalid(loc: list, msg: str) -> ProblemError:
    return ProblemError(422, f"{'.'.join(map(str, loc[1:]))}: {msg}", errors=[{"loc": loc, "msg": msg}])


def score_errors(instrument: Instrument, scores: dict[str, int]) -> list[dict]:
    """Every missing, unknown or out-of-range item, each naming the item."""
    errors = []
    for code in instrument.item_codes:
        if code not in scores:
            errors.append({"loc": ["body", "scores", code], "msg": "required: every item of the instrument is scored"})
    for code, value in scores.items():
        if code not in instrument.item_codes:
            errors.append({"loc": ["body", "scores", code],
                           "msg": f"not an item of {instrument.code} (items: {', '.join(instrument.item_codes)})"})
        elif not instrument.min_score <= value <= instrument.max_score:
            errors.append({"loc": ["body", "scores", code],
                           "msg": f"must be an integer from {instrument.min_score} to {instrument.max_score}"})
    return errors


def _already_assessed(existing: Assessment) -> ProblemError:
    return ProblemError(
        409,
        f"volunteer {existing.volunteer_id} already has a {existing.phase} {existing.instrument} assessment "
        f"({existing.id}); send \"replaces\": \"{existing.id}\" to replace it",
        slug="duplicate",
        errors=[{"loc": ["body", "phase"], "msg": f"already assessed: {existing.id}"}],
        extra={"existing_id": str(existing.id)},
    )


def _sees(scope: Visibility, assessment: Assessment) -> bool:
    return scope.orgs is None or assessment.organization_id in scope.orgs


async def _assessable_volunteer(session: AsyncSession, registry: RegistryClient, caller: CallerContext,
                                volunteer_id: uuid.UUID) -> VolunteerView:
    """The volunteer, known to the projection or to the registry, visible to the caller, not erased and
    not merged away."""
    known = await lookup.resolve(session, registry, Needs(volunteer_ids={volunteer_id}))
    volunteer = known.volunteer(volunteer_id)
    if volunteer is None and known.registry_down:
        raise ProblemError(503, "the registry cannot be reached to look up this volunteer; retry shortly",
                           headers={"Retry-After": RETRY_AFTER_S})
    if volunteer is None or not known.visible(caller, volunteer.organization_id):
        raise _invalid(["body", "volunteer_id"], "no such volunteer")
    if volunteer.erased:
        raise _invalid(["body", "volunteer_id"], "this volunteer was erased: no new assessments")
    if volunteer.merged_into is not None:
        raise _invalid(["body", "volunteer_id"], f"this volunteer was merged into {volunteer.merged_into}: use that id")
    return volunteer


def _check_replaced(old: Assessment | None, data: AssessmentCreate, scope: Visibility) -> Assessment:
    """The assessment named by `replaces` must be one of the same volunteer, instrument and phase that
    the caller may see (another organisation's is "not found", as everywhere)."""
    if old is None or not _sees(scope, old):
        raise _invalid(["body", "replaces"], "no such assessment")
    if (old.volunteer_id, old.instrument, old.phase) != (data.volunteer_id, data.instrument, data.phase):
        raise _invalid(["body", "replaces"],
                       f"assessment {old.id} is a {old.phase} {old.instrument} assessment of volunteer {old.volunteer_id}, "
                       "not of this volunteer, instrument and phase")
    return old


def _already_replaced(old: Assessment, current: Assessment | None) -> ProblemError:
    """`replaces` names one that something replaced since: the answer names the one now current."""
    current_id = current.id if current is not None else old.replaced_by
    return ProblemError(409, f"assessment {old.id} was already replaced; the current one is {current_id}",
                        slug="already-replaced",
                        errors=[{"loc": ["body", "replaces"], "msg": f"already replaced; the current one is {current_id}"}],
                        extra={"existing_id": str(current_id)})


async def record_assessment(session: AsyncSession, registry: RegistryClient, scope: Visibility,
                            data: AssessmentCreate) -> Assessment:
    instrument = INSTRUMENTS[data.instrument]
    if errors := score_errors(instrument, data.scores):
        raise ProblemError(422, "; ".join(f"scores.{e['loc'][2]}: {e['msg']}" for e in errors[:5]), errors=errors)
    if data.taken_on > local_today():
        raise _invalid(["body", "taken_on"], "cannot be in the future (dates are local to Asia/Phnom_Penh)")
    await registry_view.hold_volunteers(session, [data.volunteer_id])
    volunteer = await _assessable_volunteer(session, registry, scope.caller, data.volunteer_id)
    if data.replaces is None:
        if (existing := await repository.current(session, data.volunteer_id, data.instrument, data.phase)) is not None:
            raise _already_assessed(existing)
    else:
        old = _check_replaced(await repository.get(session, data.replaces), data, scope)
        if old.replaced_by is not None:
            raise _already_replaced(old, await repository.current(session, data.volunteer_id, data.instrument, data.phase))

    assessment = Assessment(
        volunteer_id=data.volunteer_id, organization_id=volunteer.organization_id, instrument=data.instrument,
        phase=data.phase, taken_on=data.taken_on, scores=dict(data.scores), total=sum(data.scores.values()),
        replaces=data.replaces,
    )
    try:
        # A savepoint: a concurrent twin that got there first undoes only this insert, and the answer is
        # the 409 the checks above would have given, not a 500 at commit.
        async with session.begin_nested():
            if data.replaces is not None and not await repository.mark_replaced(session, data.replaces, assessment.id):
                raise _RaceLost
            session.add(assessment)
            await session.flush()
    except (IntegrityError, _RaceLost) as exc:
        winner = await repository.current(session, data.volunteer_id, data.instrument, data.phase)
        if winner is None:  # the twin's own transaction was undone meanwhile: the client may retry
            raise ProblemError(409, "a concurrent request changed this assessment; retry", slug="conflict") from exc
        raise _already_assessed(winner) from exc
    add_event(session, new_event(ASSESSMENT_REPLACED if data.replaces else ASSESSMENT_RECORDED, assessment.id,
                                 _payload(assessment), request_id_var.get()))
    return assessment


class _RaceLost(Exception):
    """The assessment named by `replaces` was replaced by a concurrent request meanwhile."""


def _payload(assessment: Assessment) -> AssessmentChanged:
    return AssessmentChanged(
        id=assessment.id, volunteer_id=assessment.volunteer_id, instrument=assessment.instrument,
        phase=assessment.phase, taken_on=assessment.taken_on, scores=assessment.scores, total=assessment.total,
        replaces=assessment.replaces,
    )


async def get_assessment(session: AsyncSession, scope: Visibility, assessment_id: uuid.UUID) -> Assessment:
    assessment = await repository.get(session, assessment_id)
    if assessment is None or not _sees(scope, assessment):
        raise NotFound("assessment")
    return assessment


async def follow_merge(session: AsyncSession, duplicate_id: uuid.UUID, survivor_id: uuid.UUID) -> None:
    """A registry merge: the duplicate's assessments become the survivor's, or those of whoever the
    survivor was merged into since (merge events are keyed by the duplicate, so a chain's merges arrive
    in any order). Called by the merge handler, inside its unit of work; applying it twice changes
    nothing the first did not."""
    survivor_id = await registry_view.survivor_of(session, survivor_id)
    survivor = await session.get(VolunteerView, survivor_id)
    organization_id = survivor.organization_id if survivor is not None else None
    clashes = await repository.reassign(session, duplicate_id, survivor_id, organization_id)
    if clashes:
        log.info("merge kept both assessments of a phase; the survivor's stays current",
                 extra={"survivor_id": str(survivor_id), "replaced": [str(d) for d, _ in clashes]})


async def follow_transfer(session: AsyncSession, volunteer_id: uuid.UUID, organization_id: uuid.UUID) -> None:
    """The volunteer is managed by `organization_id` now: their assessments move into its view, so it
    can read and replace them (the old organisation no longer sees them, as for activities)."""
    await repository.set_organization(session, volunteer_id, organization_id, utcnow())
