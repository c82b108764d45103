"""CSV import of volunteers: whole-file checks first, then chunks of rows validated, matched and written.

Contract (product.md §4): a UTF-8 file (a BOM is fine) whose header names wire fields, nested ones
flattened (`consent_given`, `consent_given_at`, `guardian_name`, `guardian_relation`,
`external_system`, `external_id`). Rows are numbered as a spreadsheet shows them (header = 1).

* A wrong header, broken UTF-8 or malformed CSV is a 422 for the whole file, before anything changes.
* Each row is validated like `POST /volunteers` (plus the same rules: age, consent, codes, organisation).
  Valid rows are taken, rows in error are reported with their row number, column and message.
* A row whose `external_system`+`external_id` names an existing volunteer updates it (the columns of
  the file replace that volunteer's values; an empty cell clears an optional field, except
  `consent_given_at`, which is kept); if nothing differs the row is `duplicate` (counted `ignored`).
  A row without an external id whose name(s) and birth date equal an active volunteer's (or an
  earlier row's) is also `duplicate`: so re-sending a file creates nothing twice either way.
* Rows are written in chunks of `CHUNK_ROWS`, one savepoint each, with Core executemany statements
  (volunteers, external ids, updates, outbox events): no ORM objects, no per-row flush. The summary
  lists every row, `id` included, so a partner can map its rows to ours; a chunk that a concurrent
  writer makes fail is undone alone, re-planned once, then reported row by row as not saved. The
  request's unit of work commits the whole file once, before the summary is sent: a summary is
  never sent for rows that were not stored.
* `dry_run=true` does all of the above except the writes.
"""
from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.scope import Visibility
from services.registry.volunteers import repository
from services.registry.volunteers.models import ImportItem, ImportSummary, VolunteerCreate
from services.registry.volunteers.rules import PersonFacts, check_person, local_date, local_today
from services.registry.volunteers.service import commune_errors, name_keys, statistics_of, volunteer_event
from shared.db import utcnow
from shared.errors import ProblemError
from shared.events import VOLUNTEER_REGISTERED, VOLUNTEER_UPDATED, CloudEvent
from shared.outbox import add_events

CHUNK_ROWS = 1000
MAX_ROWS = 100_000

PERSON_FIELDS = (
    "name_latin", "name_km", "sex", "date_of_birth", "phone", "email", "residence_province", "residence_commune",
    "education_level", "disability", "organization_id",
)
CONSENT_COLUMNS = {"consent_given": "given", "consent_given_at": "given_at",
                   "guardian_name": "guardian_name", "guardian_relation": "guardian_relation"}
EXTERNAL_COLUMNS = ("external_system", "external_id")
COLUMNS = (*PERSON_FIELDS, *CONSENT_COLUMNS, *EXTERNAL_COLUMNS)
REQUIRED_COLUMNS = ("sex", "date_of_birth", "residence_province", "consent_given")
# Spreadsheet users type "Female"; the wire value is "female".
LOWERCASE_COLUMNS = ("sex", "education_level", "disability")
# Where a validation error of the wire model is reported in the file.
_LOC_TO_COLUMN = {
    ("consent", "given"): "consent_given", ("consent", "given_at"): "consent_given_at",
    ("consent", "guardian_name"): "guardian_name", ("consent", "guardian_relation"): "guardian_relation",
    ("consent",): "consent_given", ("external_ids",): "external_id",
    ("external_ids", 0, "system"): "external_system", ("external_ids", 0, "id"): "external_id",
}


def _file_problem(detail: str, loc: list | None = None) -> ProblemError:
    return ProblemError(422, detail, slug="invalid-csv", errors=[{"loc": loc or ["body"], "msg": detail}])


def decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = raw[: exc.start].count(b"\n") + 1
        raise _file_problem(
            f"row {row}: the file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as 'CSV UTF-8'", ["body", f"row {row}"],
        ) from exc
    return text[1:] if text.startswith("\ufeff") else text


def read_rows(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header columns, [(row number, cells)]) of the whole file; blank rows are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    number = 0  # of the last record read, to place a csv.Error on the next one
    try:
        header = next(reader, None)
        if header is None:
            raise _file_problem("the file is empty: expected a header row of column names", ["header"])
        columns = check_header(header)
        number = 1
        for number, cells in enumerate(reader, start=2):
            if any(cell.strip() for cell in cells):
                rows.append((number, cells))
                if len(rows) > MAX_ROWS:
                    raise _file_problem(f"more than {MAX_ROWS} rows: split the file")
    except csv.Error as exc:
        raise _file_problem(f"row {number + 1}: malformed CSV: {exc}", ["body", f"row {number + 1}"]) from exc
    return columns, rows


def check_header(header: list[str]) -> list[str]:
    columns = [name.strip().lower() for name in header]
    unknown = [name for name, column in zip(header, columns) if column and column not in COLUMNS]
    if unknown:
        raise _file_problem(f"unknown column(s) in header: {', '.join(unknown)}; allowed: {','.join(COLUMNS)}", ["header"])
    if "" in columns:
        raise _file_problem(f"header column {columns.index('') + 1} has no name", ["header"])
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise _file_problem(f"duplicate column(s) in header: {', '.join(duplicated)}", ["header"])
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise _file_problem(f"missing column(s) in header: {', '.join(missing)}", ["header"])
    if "name_latin" not in columns and "name_km" not in columns:
        raise _file_problem("the header needs name_latin or name_km (or both)", ["header"])
    if ("external_system" in columns) != ("external_id" in columns):
        raise _file_problem("external_system and external_id come together", ["header"])
    return columns


def _error(column: str, msg: str) -> dict:
    return {"loc": [column], "msg": msg}


def _column_of(loc: tuple) -> str:
    if not loc:
        return "name_latin"  # the model's "a name is required" check
    return _LOC_TO_COLUMN.get(tuple(loc)) or _LOC_TO_COLUMN.get(tuple(loc[:1])) or str(loc[0])


@dataclass(frozen=True)
class ParsedRow:
    number: int
    data: VolunteerCreate
    latin_key: str | None
    km_key: str | None

    @property
    def external(self) -> tuple[str, str] | None:
        return (self.data.external_ids[0].system, self.data.external_ids[0].id) if self.data.external_ids else None

    @property
    def identity(self) -> tuple:
        return self.latin_key, self.km_key, self.data.date_of_birth


def parse_row(columns: list[str], number: int, cells: list[str]) -> tuple[ParsedRow | None, list[dict]]:
    """A row as the wire model with its name keys (or its errors by column); needs no database."""
    errors: list[dict] = []
    if any(cell.strip() for cell in cells[len(columns):]):
        errors.append(_error("row", f"row has {len(cells)} cells but the header has {len(columns)} columns"))
    values = {}
    for column, cell in zip(columns, cells):
        cell = cell.strip()
        if cell:
            values[column] = cell.lower() if column in LOWERCASE_COLUMNS else cell
    body: dict = {name: values[name] for name in PERSON_FIELDS if name in values}
    body["consent"] = {key: values[column] for column, key in CONSENT_COLUMNS.items() if column in values}
    system, external_id = values.get("external_system"), values.get("external_id")
    if system and external_id:
        body["external_ids"] = [{"system": system, "id": external_id}]
    elif system or external_id:
        errors.append(_error("external_id" if system else "external_system", "external_system and external_id come together"))
    try:
        data = VolunteerCreate.model_validate(body)
    except ValidationError as exc:
        for err in exc.errors():
            errors.append(_error(_column_of(err["loc"]), err["msg"]))
        return None, errors
    latin_key, km_key, name_errors = name_keys(data.name_latin, data.name_km)
    errors += name_errors + commune_errors(data.residence_province, data.residence_commune)
    return (None if errors else ParsedRow(number, data, latin_key, km_key)), errors


@dataclass
class _Planned:
    """What one chunk will write, kept apart from the job until the chunk's transaction succeeds."""

    inserts: list[dict] = field(default_factory=list)
    external_ids: list[dict] = field(default_factory=list)
    updates: list[dict] = field(default_factory=list)
    events: list[CloudEvent] = field(default_factory=list)
    items: list[ImportItem] = field(default_factory=list)
    identities: dict[tuple, uuid.UUID] = field(default_factory=dict)


class ImportJob:
    """One file's import; the endpoint drives it chunk by chunk, in the request's unit of work."""

    def __init__(self, scope: Visibility, columns: list[str], rows: list[tuple[int, list[str]]],
                 provinces: set[str], communes: set[str], organizations: set[uuid.UUID]):
        self.scope = scope
        self.columns = columns
        self.rows = rows
        self.provinces, self.communes = provinces, communes
        self.organizations = organizations  # those the caller may put volunteers in, among the file's
        self.items: list[ImportItem] = []
        # Rows without an external id, by (Latin key, Khmer key, birth date), to the volunteer they made.
        self.identities: dict[tuple, uuid.UUID] = {}
        self.first_row_of_external_id: dict[tuple[str, str], int] = {}

    def chunks(self) -> Iterator[list[tuple[int, list[str]]]]:
        for start in range(0, len(self.rows), CHUNK_ROWS):
            yield self.rows[start:start + CHUNK_ROWS]

    async def apply(self, session: AsyncSession, chunk: list[tuple[int, list[str]]], *, dry_run: bool) -> None:
        for attempt in (1, 2):
            planned = await self._plan(session, chunk)
            if dry_run:
                break
            try:
                # Only this chunk is undone when it fails; the chunks before it stay in the unit of work.
                async with session.begin_nested():
                    await self._write(session, planned)
                break
            except IntegrityError:
                # A concurrent writer took an external id (or a row) since we looked: look again once.
                if attempt == 2:
                    planned = self._not_saved(planned)
        self.items += planned.items
        self.identities.update(planned.identities)

    # ---- planning ------------------------------------------------------------------------------

    def _row_errors(self, data: VolunteerCreate) -> list[dict]:
        errors = []
        if data.residence_province not in self.provinces:
            errors.append(_error("residence_province", f"unknown province code {data.residence_province}"))
        if data.residence_commune is not None and data.residence_commune not in self.communes:
            errors.append(_error("residence_commune", f"unknown commune code {data.residence_commune}"))
        if data.organization_id is not None and data.organization_id not in self.organizations:
            errors.append(_error("organization_id", "organisation not found (a key manages volunteers of its own organisation or one below it)"))
        return errors

    async def _plan(self, session: AsyncSession, chunk: list[tuple[int, list[str]]]) -> _Planned:
        now = utcnow()
        today = local_today(now)
        planned = _Planned()
        parsed: list[ParsedRow] = []
        for number, cells in chunk:
            row, errors = parse_row(self.columns, number, cells)
            if row is not None:
                errors = self._row_errors(row.data)
                errors += [_located(e) for e in check_person(_facts(row.data), registered_on=today, now=now)]
                if row.external is not None:
                    first = self.first_row_of_external_id.setdefault(row.external, number)
                    if first != number:
                        errors.append(_error("external_id", f"the same external id is already on row {first}"))
            if errors:
                planned.items.append(ImportItem(index=number, status="error", errors=errors))
            else:
                parsed.append(row)

        owners = await repository.owners_of_external_ids(session, {r.external for r in parsed if r.external})
        existing = await repository.rows_by_ids(session, set(owners.values()))
        unmatched = [r for r in parsed if r.external is None]
        candidates = await repository.identity_matches(
            session, self.scope.orgs, {r.latin_key for r in unmatched if r.latin_key}, {r.km_key for r in unmatched if r.km_key}
        )
        known = {(c["name_latin_key"], c["name_km_key"], c["date_of_birth"]): c["id"] for c in candidates}

        for row in parsed:
            if row.external is not None:
                owner = owners.get(row.external)
                if owner is not None:
                    self._plan_update(planned, row, existing.get(owner), now)
                    continue
            else:
                same = self.identities.get(row.identity) or planned.identities.get(row.identity) or known.get(row.identity)
                if same is not None:
                    planned.items.append(ImportItem(index=row.number, status="duplicate", id=same))
                    continue
            self._plan_insert(planned, row, now)
        planned.items.sort(key=lambda item: item.index)
        return planned

    def _plan_insert(self, planned: _Planned, row: ParsedRow, now: datetime) -> None:
        volunteer_id = uuid.uuid4()
        values = {"id": volunteer_id, **_person_values(row, now), "erased": False, "merged_into": None,
                  "created_at": now, "updated_at": now}
        if values["organization_id"] is None:
            values["organization_id"] = self.scope.caller.organization_id
        planned.inserts.append(values)
        if row.external is not None:
            planned.external_ids.append({"system": row.external[0], "external_id": row.external[1],
                                         "volunteer_id": volunteer_id, "created_at": now})
        else:
            planned.identities[row.identity] = volunteer_id
        planned.events.append(volunteer_event(VOLUNTEER_REGISTERED, values))
        planned.items.append(ImportItem(index=row.number, status="created", id=volunteer_id))

    def _plan_update(self, planned: _Planned, row: ParsedRow, current: dict | None, now: datetime) -> None:
        number, data = row.number, row.data
        if current is None or not self.scope.can_see(current["organization_id"]):
            planned.items.append(ImportItem(index=number, status="error", errors=[
                _error("external_id", "this external id belongs to a volunteer of another organisation")]))
            return
        if current["erased"] or current["merged_into"] is not None:
            planned.items.append(ImportItem(index=number, status="error", errors=[
                _error("external_id", "this external id belongs to an erased or merged volunteer")]))
            return
        given = _person_values(row, now)
        new = dict(current)
        for name in repository.PERSON_COLUMNS:
            if _column_in_file(name, self.columns):
                new[name] = given[name]
        if new["organization_id"] is None:
            new["organization_id"] = current["organization_id"]
        if data.consent.given_at is None:  # "when" was recorded at registration; an empty cell keeps it
            new["consent_given_at"] = current["consent_given_at"]
        # Rules hold at the registration date, as for a PATCH.
        errors = [_located(e) for e in check_person(
            PersonFacts(new["date_of_birth"], new["consent_given"], new["consent_given_at"],
                        new["guardian_name"], new["guardian_relation"]),
            registered_on=local_date(current["created_at"]), now=now)]
        if new["name_latin"] is None and new["name_km"] is None:
            errors.append(_error("name_latin", "name_latin or name_km is required (the file empties the name this volunteer has)"))
        if errors:
            planned.items.append(ImportItem(index=number, status="error", errors=errors))
            return
        if all(new[name] == current[name] for name in repository.PERSON_COLUMNS):
            planned.items.append(ImportItem(index=number, status="duplicate", id=current["id"]))
            return
        planned.updates.append({"row_id": current["id"], **{n: new[n] for n in repository.PERSON_COLUMNS}, "updated_at": now})
        if statistics_of(new) != statistics_of(current):
            planned.events.append(volunteer_event(VOLUNTEER_UPDATED, new))
        planned.items.append(ImportItem(index=number, status="updated", id=current["id"]))

    # ---- writing -------------------------------------------------------------------------------

    async def _write(self, session: AsyncSession, planned: _Planned) -> None:
        await repository.insert_volunteers(session, planned.inserts)
        await repository.insert_external_ids(session, planned.external_ids)
        await repository.update_volunteers(session, planned.updates)
        await add_events(session, planned.events)

    @staticmethod
    def _not_saved(planned: _Planned) -> _Planned:
        msg = "not saved: a concurrent change conflicted with this part of the file; send these rows again"
        items = [item if item.status == "error" else ImportItem(index=item.index, status="error", errors=[_error("row", msg)])
                 for item in planned.items]
        return _Planned(items=items)

    def summary(self, dry_run: bool) -> ImportSummary:
        counts = {"created": 0, "updated": 0, "duplicate": 0, "error": 0}
        for item in self.items:
            counts[item.status] += 1
        verb = "would be" if dry_run else "were"
        message = (f"{len(self.items)} rows: {counts['created']} {verb} created, {counts['updated']} updated, "
                   f"{counts['duplicate']} unchanged or already registered; {counts['error']} rejected")
        if counts["error"] and not dry_run:
            message += " (the other rows were saved; fix and re-send the rejected ones: re-sending saved rows changes nothing)"
        if dry_run:
            message += "; dry run: nothing was changed"
        return ImportSummary(dry_run=dry_run, created=counts["created"], updated=counts["updated"],
                             ignored=counts["duplicate"], errors=counts["error"], message=message, items=self.items)


def _facts(data: VolunteerCreate) -> PersonFacts:
    c = data.consent
    return PersonFacts(data.date_of_birth, c.given, c.given_at, c.guardian_name, c.guardian_relation)


def _located(error: dict) -> dict:
    """A rule's wire path as the CSV column it came from."""
    return _error(_column_of(tuple(error["loc"])), error["msg"])


def _column_in_file(name: str, columns: list[str]) -> bool:
    if name in ("name_latin_key", "name_km_key"):
        return name.removesuffix("_key") in columns
    return name in columns


def _person_values(row: ParsedRow, now: datetime) -> dict:
    data, c = row.data, row.data.consent
    return {
        "name_latin": data.name_latin, "name_km": data.name_km, "name_latin_key": row.latin_key, "name_km_key": row.km_key,
        "sex": data.sex, "date_of_birth": data.date_of_birth, "phone": data.phone, "email": data.email,
        "residence_province": data.residence_province, "residence_commune": data.residence_commune,
        "education_level": data.education_level, "disability": data.disability,
        "organization_id": data.organization_id,
        "consent_given": c.given, "consent_given_at": c.given_at or now,
        "guardian_name": c.guardian_name, "guardian_relation": c.guardian_relation,
    }


async def start(session: AsyncSession, scope: Visibility, raw: bytes) -> ImportJob:
    """Whole-file checks (encoding, CSV syntax, header) and the reference data rows are checked against."""
    columns, rows = read_rows(decode(raw))
    provinces, communes = await repository.place_codes(session)
    named: set[uuid.UUID] = set()
    if "organization_id" in columns:
        position = columns.index("organization_id")
        for _, cells in rows:
            try:
                named.add(uuid.UUID(cells[position].strip()))
            except (ValueError, IndexError):
                pass  # reported by the row's own validation
    allowed = {org for org in await repository.existing_organizations(session, named) if scope.can_manage(org)}
    return ImportJob(scope, columns, rows, provinces, communes, allowed)
