"""Rules for the gazetteer: search keys, listing, and the CSV import (validated, then applied at once)."""
from __future__ import annotations

import base64
import csv
import io
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry.gazetteer import LocationRow, parse_location_csv
from services.registry.locations import repository
from services.registry.locations.models import Location
from services.registry.normalize import normalize_name
from shared.caller import CallerContext
from shared.db import utcnow
from shared.errors import NotFound, ProblemError
from shared.events import LOCATIONS_IMPORTED, LocationRecord, LocationsImported, new_event
from shared.logs import request_id_var
from shared.outbox import add_event

# One event per this many changed entries: a full village list (~14k rows) stays far below the
# broker's message size limit, and consumers apply each chunk in one transaction.
EVENT_CHUNK = 1000
# Kafka key of gazetteer events: one key keeps every import in order on one partition.
GAZETTEER_SUBJECT = "gazetteer"


def search_key(name_en: str | None, name_km: str | None) -> str:
    """What `q` is matched against: both names' normalised forms (see services.registry.normalize)."""
    return " ".join(key for key in (normalize_name(name_en or ""), normalize_name(name_km or "")) if key)


def query_key(q: str) -> str:
    key = normalize_name(q)
    if not key:
        raise ProblemError(422, "q has nothing to search for (only spaces or punctuation)",
                           errors=[{"loc": ["query", "q"], "msg": "nothing to search for"}])
    return key


# ---- listing ------------------------------------------------------------------------------------
def encode_cursor(code: str) -> str:
    return base64.urlsafe_b64encode(code.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        code = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_cursor() from exc
    if not (code.isascii() and code.isdigit() and len(code) <= 8):
        raise _bad_cursor()
    return code


def _bad_cursor() -> ProblemError:
    return ProblemError(422, "invalid cursor", errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}])


async def get_location(session: AsyncSession, code: str) -> Location:
    location = await repository.get(session, code)
    if location is None:
        raise NotFound("location")
    return location


# ---- CSV import ---------------------------------------------------------------------------------
@dataclass
class ImportSummary:
    """DHIS2-like import summary: counts, and one item per data row in file order."""

    dry_run: bool
    created: int = 0
    updated: int = 0
    ignored: int = 0
    errors: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, index: int, status: str, errors: list[dict] | None = None, code: str | None = None) -> None:
        item: dict[str, Any] = {"index": index, "status": status}
        if code is not None:
            item["code"] = code
        if errors:
            item["errors"] = errors
        self.items.append(item)
        if status == "error":
            self.errors += 1
        else:
            setattr(self, status, getattr(self, status) + 1)

    def as_dict(self) -> dict[str, Any]:
        self.items.sort(key=lambda item: item["index"])
        return {"created": self.created, "updated": self.updated, "ignored": self.ignored, "errors": self.errors,
                "dry_run": self.dry_run, "items": self.items}


def decode_csv(raw: bytes) -> str:
    """The uploaded bytes as text; anything but UTF-8 is refused with the place of the first bad byte."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _encoding_problem("the file is UTF-16 (Excel's 'Unicode Text'); save it as 'CSV UTF-8'")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _encoding_problem(
            f"the file is not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line}); "
            "save it as 'CSV UTF-8'"
        ) from exc


def _encoding_problem(msg: str) -> ProblemError:
    return ProblemError(422, msg, slug="invalid-encoding", errors=[{"loc": ["body"], "msg": msg}])


def _data_row_numbers(text: str) -> list[int]:
    """Spreadsheet row numbers of the non-blank records, as parse_location_csv counts and skips them."""
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader, None)
    return [number for number, cells in enumerate(reader, start=2) if any(cell.strip() for cell in cells)]


def _require_national(caller: CallerContext) -> None:
    if not caller.national:
        raise ProblemError(403, "the gazetteer is national: only a national key may import locations", slug="forbidden")


async def import_locations(session: AsyncSession, caller: CallerContext, text: str, *, dry_run: bool) -> ImportSummary:
    """Validate a gazetteer CSV and (unless `dry_run`) apply its valid rows; never commits.

    A row's parent must be in the gazetteer already or on an earlier, valid row of the same file. A
    code that exists gets its names updated (a blank name cell keeps the stored name); a row that
    changes nothing is ignored, so re-sending a file changes nothing twice.
    """
    _require_national(caller)
    try:
        rows, row_errors = parse_location_csv(text)
    except ValueError as exc:
        raise ProblemError(422, f"the CSV cannot be read: {exc}", errors=[{"loc": ["body"], "msg": str(exc)}]) from exc

    summary = ImportSummary(dry_run=dry_run)
    for error in row_errors:
        summary.add(error["index"], "error", list(error["errors"]))
    error_rows = {error["index"] for error in row_errors}
    numbers = [n for n in _data_row_numbers(text) if n not in error_rows]
    assert len(numbers) == len(rows), "row numbering disagrees with parse_location_csv"

    stored = await repository.by_codes(session, [r["code"] for r in rows] + [r["parent_code"] for r in rows])
    row_of_code = {row["code"]: number for number, row in zip(numbers, rows)}
    accepted: set[str] = set()  # codes that will exist after this import, from this file
    now = utcnow()
    inserts: list[dict] = []
    updates: list[dict] = []
    changed: list[LocationRecord] = []
    for number, row in zip(numbers, rows):
        code, parent = row["code"], row["parent_code"]
        if parent not in stored and parent not in accepted:
            summary.add(number, "error", [{"loc": ["parent_code"], "msg": _missing_parent(parent, number, row_of_code)}],
                        code=code)
            continue
        accepted.add(code)
        existing = stored.get(code)
        if existing is None:
            inserts.append(_new_entry(row, now))
            summary.add(number, "created", code=code)
        else:
            name_en = row["name_en"] if row["name_en"] is not None else existing.name_en
            name_km = row["name_km"] if row["name_km"] is not None else existing.name_km
            if (name_en, name_km) == (existing.name_en, existing.name_km):
                summary.add(number, "ignored", code=code)
                continue
            updates.append({"code": code, "name_en": name_en, "name_km": name_km,
                            "search_key": search_key(name_en, name_km), "updated_at": now})
            summary.add(number, "updated", code=code)
        changed.append(LocationRecord(code=code, level=row["level"], parent_code=parent))

    if not dry_run:
        try:
            await repository.insert_many(session, inserts)
            await repository.update_many(session, updates)
        except IntegrityError as exc:
            # Another import added one of these codes since we read the gazetteer; the unit of work
            # rolls the whole import back.
            raise ProblemError(409, "the gazetteer changed during this import (a concurrent import?); send the file again",
                               slug="concurrent-import") from exc
        for start in range(0, len(changed), EVENT_CHUNK):
            payload = LocationsImported(locations=changed[start:start + EVENT_CHUNK])
            add_event(session, new_event(LOCATIONS_IMPORTED, GAZETTEER_SUBJECT, payload, request_id_var.get()))
    return summary


def _missing_parent(parent: str, number: int, row_of_code: dict[str, int]) -> str:
    parent_row = row_of_code.get(parent)
    if parent_row is None:
        return f"parent {parent} is neither in the gazetteer nor on a valid earlier row of this file"
    if parent_row > number:
        return f"parent {parent} comes later in the file (row {parent_row}); list parents before their children"
    return f"parent {parent} was not imported (row {parent_row} has errors)"


def _new_entry(row: LocationRow, now) -> dict:
    return {
        "code": row["code"], "level": row["level"], "name_en": row["name_en"], "name_km": row["name_km"],
        "parent_code": row["parent_code"], "search_key": search_key(row["name_en"], row["name_km"]),
        "created_at": now, "updated_at": now,
    }
