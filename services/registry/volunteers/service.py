"""Rules for volunteers: registration, changes, search, duplicates, merge and erasure, with their events.

Events carry only the pseudonymous, statistical attributes (`VolunteerChanged`). `vmc.volunteer.updated`
is published when one of those changes (sex, birth date, residence, education, disability,
organisation): a change of name, phone, email, consent or external ids has nothing to tell consumers.
"""
from __future__ import annotations

import base64
import uuid
from datetime import datetime

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.enrollments import service as enrollments
from services.registry.locations.repository import missing_codes
from services.registry.normalize import normalize_name, normalize_phone
from services.registry.organizations import repository as organizations
from services.registry.scope import Visibility
from services.registry.volunteers import repository
from services.registry.volunteers.models import (
    REQUIRED_ON_UPDATE, DuplicatePair, Volunteer, VolunteerCreate, VolunteerPublic, VolunteerUpdate,
)
from services.registry.volunteers.rules import PersonFacts, check_person, local_date, local_today
from shared.db import utcnow
from shared.errors import NotFound, ProblemError
from shared.events import (
    VOLUNTEER_ERASED, VOLUNTEER_MERGED, VOLUNTEER_REGISTERED, VOLUNTEER_UPDATED, CloudEvent, VolunteerChanged,
    VolunteerErased, VolunteerMerged, new_event,
)
from shared.logs import request_id_var
from shared.outbox import add_event
from shared.pagination import encode_cursor, paginate

# Personal fields emptied by erasure (the statistical record stays).
ERASED_FIELDS = ("name_latin", "name_km", "name_latin_key", "name_km_key", "phone", "email", "guardian_name", "guardian_relation")


# ---- events ------------------------------------------------------------------------------------

def statistics_of(row: Volunteer | dict) -> VolunteerChanged:
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    return VolunteerChanged(
        id=get("id"), organization_id=get("organization_id"), sex=get("sex"), date_of_birth=get("date_of_birth"),
        residence_province=get("residence_province"), residence_commune=get("residence_commune"),
        education_level=get("education_level"), disability=get("disability"),
    )


def volunteer_event(type_: str, row: Volunteer | dict) -> CloudEvent:
    payload = statistics_of(row)
    return new_event(type_, payload.id, payload, request_id_var.get())


# ---- validation helpers shared with the importer ----------------------------------------------

def name_keys(name_latin: str | None, name_km: str | None) -> tuple[str | None, str | None, list[dict]]:
    """The search keys of both names, and errors: at least one name, each with something searchable in it."""
    if name_latin is None and name_km is None:
        return None, None, [{"loc": ["name_latin"], "msg": "name_latin or name_km is required"}]
    latin_key = normalize_name(name_latin) if name_latin is not None else None
    km_key = normalize_name(name_km) if name_km is not None else None
    errors = [{"loc": [field], "msg": "must contain letters"}
              for field, key in (("name_latin", latin_key), ("name_km", km_key)) if key == ""]
    return latin_key or None, km_key or None, errors


def commune_errors(province: str, commune: str | None) -> list[dict]:
    if commune is not None and not commune.startswith(province):
        return [{"loc": ["residence_commune"], "msg": f"commune {commune} is not in province {province}"}]
    return []


def invalid(errors: list[dict], prefix: str = "body") -> ProblemError:
    errors = [{"loc": [prefix, *e["loc"]], "msg": e["msg"]} for e in errors]
    detail = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors[:5])
    return ProblemError(422, detail, errors=errors)


async def _place_errors(session: AsyncSession, province: str, commune: str | None) -> list[dict]:
    errors = []
    if await missing_codes(session, [province], level="province"):
        errors.append({"loc": ["residence_province"], "msg": f"unknown province code {province}"})
    if commune is not None:
        if await missing_codes(session, [commune], level="commune"):
            errors.append({"loc": ["residence_commune"], "msg": f"unknown commune code {commune}"})
        else:
            errors += commune_errors(province, commune)
    return errors


async def _organization_errors(session: AsyncSession, scope: Visibility, org_id: uuid.UUID) -> list[dict]:
    # An organisation outside the caller's tree answers like a missing one: its existence is not told.
    if not scope.can_manage(org_id) or await organizations.get(session, org_id) is None:
        return [{"loc": ["organization_id"], "msg": "organisation not found (a key manages volunteers of its own organisation or one below it)"}]
    return []


async def _claim_external_ids(
    session: AsyncSession, scope: Visibility, pairs: set[tuple[str, str]], owner: uuid.UUID | None
) -> None:
    """409 if another volunteer holds one of `pairs` (named when the caller may see it)."""
    held = await repository.owners_of_external_ids(session, pairs)
    for (system, external_id), holder in sorted(held.items()):
        if holder == owner:
            continue
        holder_row = await repository.get(session, holder)
        if holder_row is not None and scope.can_see(holder_row.organization_id):
            detail = f"external id {system}:{external_id} already belongs to volunteer {holder}"
            extra = {"existing_id": str(holder)}
        else:
            detail = f"external id {system}:{external_id} already belongs to a volunteer of another organisation"
            extra = {}
        raise ProblemError(409, detail, slug="external-id-taken",
                           errors=[{"loc": ["body", "external_ids"], "msg": detail}], extra=extra)


async def _flush_or_conflict(session: AsyncSession) -> None:
    """Flush now so a concurrent twin taking the same external id is a 409, not a 500 at commit."""
    try:
        await session.flush()
    except IntegrityError as exc:
        raise ProblemError(409, "an external id was taken by a concurrent request; retry to see which",
                           slug="external-id-taken") from exc


# ---- reads -------------------------------------------------------------------------------------

async def get_visible(session: AsyncSession, scope: Visibility, volunteer_id: uuid.UUID, *, lock: bool = False) -> Volunteer:
    row = await (repository.get_for_update if lock else repository.get)(session, volunteer_id)
    if row is None or not scope.can_see(row.organization_id):
        raise NotFound("volunteer")
    return row


def ensure_changeable(row: Volunteer) -> None:
    if row.merged_into is not None:
        raise ProblemError(409, f"volunteer {row.id} was merged into {row.merged_into}; change that record instead",
                           slug="volunteer-merged", extra={"merged_into": str(row.merged_into)})
    if row.erased:
        raise ProblemError(409, f"volunteer {row.id} was erased", slug="volunteer-erased")


async def public(session: AsyncSession, row: Volunteer) -> VolunteerPublic:
    return VolunteerPublic.of(row, (await repository.external_ids_of(session, [row.id])).get(row.id, []))


async def publics(session: AsyncSession, rows: list[Volunteer]) -> list[VolunteerPublic]:
    ids = await repository.external_ids_of(session, [r.id for r in rows])
    return [VolunteerPublic.of(r, ids.get(r.id, [])) for r in rows]


def search_terms(q: str | None) -> tuple[str | None, str | None]:
    """`q` as a name key and, when it reads as one, a phone number; 422 if it holds nothing to search."""
    if q is None:
        return None, None
    try:
        phone = normalize_phone(q)
    except ValueError:
        phone = None
    key = normalize_name(q) or None
    if key is None and phone is None:
        raise ProblemError(422, "q holds nothing to search for", errors=[{"loc": ["query", "q"], "msg": "no letters or digits"}])
    return key, phone


async def search(session: AsyncSession, scope: Visibility, limit: int, cursor: str | None, q: str | None, **filters) -> dict:
    """A page of visible volunteers (keyset on updated_at, id) matching `q` and the filters."""
    name_key_, phone = search_terms(q)
    query = repository.list_query(scope.orgs, repository.VolunteerFilters(name_key=name_key_, phone=phone, **filters))
    rows = await repository.rows(session, paginate(query, Volunteer, limit, cursor))
    more, rows = len(rows) > limit, rows[:limit]
    return {"items": await publics(session, rows),
            "next_cursor": encode_cursor(rows[-1].updated_at, rows[-1].id) if more and rows else None}


# ---- writes ------------------------------------------------------------------------------------

async def register(session: AsyncSession, scope: Visibility, data: VolunteerCreate) -> Volunteer:
    org_id = data.organization_id or scope.caller.organization_id
    now = utcnow()
    consent = data.consent
    latin_key, km_key, errors = name_keys(data.name_latin, data.name_km)
    errors += check_person(
        PersonFacts(data.date_of_birth, consent.given, consent.given_at, consent.guardian_name, consent.guardian_relation),
        registered_on=local_today(now), now=now,
    )
    errors += await _place_errors(session, data.residence_province, data.residence_commune)
    errors += await _organization_errors(session, scope, org_id)
    if errors:
        raise invalid(errors)
    pairs = {(e.system, e.id) for e in data.external_ids}
    await _claim_external_ids(session, scope, pairs, owner=None)
    row = Volunteer(
        **data.model_dump(exclude={"consent", "external_ids", "organization_id"}),
        name_latin_key=latin_key, name_km_key=km_key, organization_id=org_id,
        consent_given=consent.given, consent_given_at=consent.given_at or now,
        guardian_name=consent.guardian_name, guardian_relation=consent.guardian_relation,
        created_at=now, updated_at=now,
    )
    session.add(row)
    repository.add_external_ids(session, row.id, sorted(pairs))
    add_event(session, volunteer_event(VOLUNTEER_REGISTERED, row))
    await _flush_or_conflict(session)
    return row


async def update(session: AsyncSession, scope: Visibility, volunteer_id: uuid.UUID, data: VolunteerUpdate) -> Volunteer:
    row = await get_visible(session, scope, volunteer_id, lock=True)
    ensure_changeable(row)
    changes = data.model_dump(exclude_unset=True)
    errors = [{"loc": [name], "msg": "cannot be null"} for name in REQUIRED_ON_UPDATE if name in changes and changes[name] is None]
    if errors:
        raise invalid(errors)
    consent = changes.pop("consent", None) or {}
    if "given" in consent and consent["given"] is None:
        raise invalid([{"loc": ["consent", "given"], "msg": "cannot be null"}])
    new_pairs = {(e["system"], e["id"]) for e in changes.pop("external_ids")} if "external_ids" in changes else None

    state = {name: getattr(row, name) for name in repository.PERSON_COLUMNS}
    state.update(changes)
    state.update({f"consent_{k}" if k in ("given", "given_at") else k: v for k, v in consent.items()})
    state["name_latin_key"], state["name_km_key"], errors = name_keys(state["name_latin"], state["name_km"])
    errors += check_person(
        PersonFacts(state["date_of_birth"], state["consent_given"], state["consent_given_at"],
                    state["guardian_name"], state["guardian_relation"]),
        registered_on=local_date(row.created_at),
    )
    if {"residence_province", "residence_commune"} & changes.keys():
        errors += await _place_errors(session, state["residence_province"], state["residence_commune"])
    if "organization_id" in changes and changes["organization_id"] != row.organization_id:
        errors += await _organization_errors(session, scope, changes["organization_id"])
    if errors:
        raise invalid(errors)

    before = statistics_of(row)
    changed = False
    for name, value in state.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    if new_pairs is not None:
        old_pairs = set((await repository.external_ids_of(session, [row.id])).get(row.id, []))
        if new_pairs != old_pairs:
            await _claim_external_ids(session, scope, new_pairs - old_pairs, owner=row.id)
            await repository.remove_external_ids(session, row.id, old_pairs - new_pairs)
            repository.add_external_ids(session, row.id, sorted(new_pairs - old_pairs))
            changed = True
    if changed:
        row.updated_at = utcnow()
    if statistics_of(row) != before:
        add_event(session, volunteer_event(VOLUNTEER_UPDATED, row))
    await _flush_or_conflict(session)
    return row


def _erase_row(row: Volunteer, now: datetime) -> None:
    for name in ERASED_FIELDS:
        setattr(row, name, None)
    row.erased = True
    row.updated_at = now


async def erase(session: AsyncSession, scope: Visibility, volunteer_id: uuid.UUID) -> None:
    """Remove direct identifiers of the volunteer and of the records merged into it (the same person).

    Idempotent: erasing an erased volunteer does nothing and publishes nothing.
    """
    row = await get_visible(session, scope, volunteer_id, lock=True)
    now = utcnow()
    for person in [row, *await repository.merged_into(session, row.id)]:
        if person.erased:
            continue
        _erase_row(person, now)
        await repository.remove_external_ids(session, person.id)
        add_event(session, new_event(VOLUNTEER_ERASED, person.id, VolunteerErased(id=person.id), request_id_var.get()))


async def merge(session: AsyncSession, scope: Visibility, survivor_id: uuid.UUID, duplicate_id: uuid.UUID) -> Volunteer:
    if survivor_id == duplicate_id:
        raise invalid([{"loc": ["duplicate_id"], "msg": "a volunteer cannot be merged into itself"}])
    # Lock in id order so two opposite merges of the same pair cannot deadlock.
    first, second = sorted([survivor_id, duplicate_id])
    locked = {first: await get_visible(session, scope, first, lock=True),
              second: await get_visible(session, scope, second, lock=True)}
    survivor, duplicate = locked[survivor_id], locked[duplicate_id]
    for row in (survivor, duplicate):
        ensure_changeable(row)
    now = utcnow()
    await repository.move_external_ids(session, duplicate.id, survivor.id)
    await enrollments.move_to_survivor(session, duplicate.id, survivor.id, local_today(now))
    await repository.repoint_merged(session, duplicate.id, survivor.id, now)
    duplicate.merged_into = survivor.id
    duplicate.updated_at = survivor.updated_at = now
    add_event(session, new_event(
        VOLUNTEER_MERGED, duplicate.id, VolunteerMerged(survivor_id=survivor.id, duplicate_id=duplicate.id),
        request_id_var.get(),
    ))
    await session.flush()
    return survivor


# ---- duplicates --------------------------------------------------------------------------------

def _encode_pair(pair: tuple[uuid.UUID, uuid.UUID]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([str(pair[0]), str(pair[1])])).decode().rstrip("=")


def _decode_pair(cursor: str) -> tuple[uuid.UUID, uuid.UUID]:
    try:
        a, b = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return uuid.UUID(a), uuid.UUID(b)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ProblemError(422, "invalid cursor", errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}]) from exc


def duplicate_reasons(a: Volunteer, b: Volunteer) -> list[str]:
    reasons = []
    if a.phone is not None and a.phone == b.phone:
        reasons.append("phone")
    same_name = (a.name_latin_key is not None and a.name_latin_key == b.name_latin_key) or (
        a.name_km_key is not None and a.name_km_key == b.name_km_key)
    if same_name and a.date_of_birth == b.date_of_birth:
        reasons.append("name_and_birth_date")
    return reasons


async def duplicates(session: AsyncSession, scope: Visibility, limit: int, cursor: str | None) -> dict:
    after = _decode_pair(cursor) if cursor else None
    pairs = await repository.duplicate_pairs(session, scope.orgs, limit, after)
    more, pairs = len(pairs) > limit, pairs[:limit]
    rows = await repository.by_ids(session, {v for pair in pairs for v in pair})
    items = [DuplicatePair(volunteer_ids=[a, b], reasons=duplicate_reasons(rows[a], rows[b])) for a, b in pairs]
    return {"items": items, "next_cursor": _encode_pair(pairs[-1]) if more and pairs else None}
