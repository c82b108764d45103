"""Cambodia's administrative gazetteer: the seeded provinces and validation of location CSV imports.

Codes follow the NCDD / National Institute of Statistics scheme: two digits per level, each code
extending its parent's (province 01 → district 0102 → commune 010201 → village 01020101).

Only districts, communes and villages are imported from CSV; the 25 provinces are seeded from
`PROVINCES`. `parse_location_csv` checks each row on its own and against the rest of the file; whether
a parent code exists in the database is left to the caller, which owns the session.
"""
from __future__ import annotations

import csv
import io
import unicodedata
from typing import TypedDict

from services.registry.normalize import nfc

# (code, name_en, name_km). Phnom Penh is a capital municipality, not a province, but has a province
# code and sits at the province level of the hierarchy.
PROVINCES: list[tuple[str, str, str]] = [
    ("01", "Banteay Meanchey", "បន្ទាយមានជ័យ"),
    ("02", "Battambang", "បាត់ដំបង"),
    ("03", "Kampong Cham", "កំពង់ចាម"),
    ("04", "Kampong Chhnang", "កំពង់ឆ្នាំង"),
    ("05", "Kampong Speu", "កំពង់ស្ពឺ"),
    ("06", "Kampong Thom", "កំពង់ធំ"),
    ("07", "Kampot", "កំពត"),
    ("08", "Kandal", "កណ្ដាល"),
    ("09", "Koh Kong", "កោះកុង"),
    ("10", "Kratie", "ក្រចេះ"),
    ("11", "Mondul Kiri", "មណ្ឌលគិរី"),
    ("12", "Phnom Penh", "ភ្នំពេញ"),
    ("13", "Preah Vihear", "ព្រះវិហារ"),
    ("14", "Prey Veng", "ព្រៃវែង"),
    ("15", "Pursat", "ពោធិ៍សាត់"),
    ("16", "Ratanak Kiri", "រតនគិរី"),
    ("17", "Siemreap", "សៀមរាប"),
    ("18", "Preah Sihanouk", "ព្រះសីហនុ"),
    ("19", "Stung Treng", "ស្ទឹងត្រែង"),
    ("20", "Svay Rieng", "ស្វាយរៀង"),
    ("21", "Takeo", "តាកែវ"),
    ("22", "Oddar Meanchey", "ឧត្តរមានជ័យ"),
    ("23", "Kep", "កែប"),
    ("24", "Pailin", "ប៉ៃលិន"),
    ("25", "Tbong Khmum", "ត្បូងឃ្មុំ"),
]

LEVEL_DIGITS: dict[str, int] = {"province": 2, "district": 4, "commune": 6, "village": 8}
_PARENT_LEVEL: dict[str, str] = {"district": "province", "commune": "district", "village": "commune"}

CSV_COLUMNS: tuple[str, ...] = ("code", "level", "name_en", "name_km", "parent_code")
MAX_NAME_LENGTH = 200
# Not a column: the location of errors that concern the row as a whole.
ROW_LOC = "row"
# Excel reads a code column as numbers unless told otherwise, turning 0102 into 102.
_LEADING_ZEROS_HINT = " (were leading zeros dropped by a spreadsheet? format the column as text)"


class LocationRow(TypedDict):
    code: str
    level: str
    name_en: str | None
    name_km: str | None
    parent_code: str


class FieldError(TypedDict):
    loc: list[str]
    msg: str


class RowErrors(TypedDict):
    index: int
    errors: list[FieldError]


def parse_location_csv(text: str) -> tuple[list[LocationRow], list[RowErrors]]:
    """Parse a gazetteer CSV into (valid rows, per-row errors).

    `text` is the decoded file (UTF-8; a leading BOM is ignored). The header must name exactly the
    columns `code,level,name_en,name_km,parent_code`, in any order, case-insensitively; otherwise
    ValueError names the missing or unknown column. Error `index` is the spreadsheet row number (the
    header is row 1), counted in CSV records so that a quoted multi-line cell does not shift it.
    Rows whose cells are all blank are skipped. Absent names are returned as None, present ones
    trimmed and NFC-normalised.
    """
    if not isinstance(text, str):
        raise TypeError(f"CSV text must be a decoded string, not {type(text).__name__}")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    row_number = 0  # of the last record read, to place a csv.Error on the next one
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"CSV is empty: expected the header {','.join(CSV_COLUMNS)}")
        columns = _check_header(header)
        row_number = 1

        rows: list[LocationRow] = []
        errors: list[RowErrors] = []
        first_row_of_code: dict[str, int] = {}
        for row_number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            row, row_errors = _check_row(columns, cells)
            code = row["code"]
            if _is_digits(code):
                if code in first_row_of_code:
                    row_errors.append(_error("code", f"duplicate code {code}: already on row {first_row_of_code[code]}"))
                else:
                    first_row_of_code[code] = row_number
            if row_errors:
                errors.append({"index": row_number, "errors": row_errors})
            else:
                rows.append(row)
    except csv.Error as exc:
        raise ValueError(f"row {row_number + 1}: malformed CSV: {exc}") from exc
    return rows, errors


def _check_header(header: list[str]) -> list[str]:
    given = [name.strip() for name in header]
    columns = [name.lower() for name in given]
    # Unknown names first: a file whose header row was forgotten is best explained by its first row.
    unknown = [name for name, column in zip(given, columns) if column and column not in CSV_COLUMNS]
    if unknown:
        raise ValueError(f"unknown column(s) in header: {', '.join(unknown)}; expected {','.join(CSV_COLUMNS)}")
    for position, column in enumerate(columns, start=1):
        if not column:
            raise ValueError(f"header column {position} has no name; expected {','.join(CSV_COLUMNS)}")
    duplicated = sorted({column for column in columns if columns.count(column) > 1})
    if duplicated:
        raise ValueError(f"duplicate column(s) in header: {', '.join(duplicated)}")
    missing = [column for column in CSV_COLUMNS if column not in columns]
    if missing:
        raise ValueError(f"missing column(s) in header: {', '.join(missing)}")
    return columns


def _check_row(columns: list[str], cells: list[str]) -> tuple[LocationRow, list[FieldError]]:
    errors: list[FieldError] = []
    # Spreadsheets pad rows with empty trailing cells; only data beyond the header is a mistake.
    if any(cell.strip() for cell in cells[len(columns):]):
        errors.append(_error(ROW_LOC, f"row has {len(cells)} cells but the header has {len(columns)} columns"))
    values = {column: (cells[i].strip() if i < len(cells) else "") for i, column in enumerate(columns)}

    code = values["code"]
    level = values["level"].lower()
    parent_code = values["parent_code"]
    errors.extend(_check_code_and_level(code, level))
    errors.extend(_check_parent(code, level, parent_code))

    names: dict[str, str | None] = {}
    for field in ("name_en", "name_km"):
        name = nfc(values[field])
        names[field] = name or None
        if len(name) > MAX_NAME_LENGTH:
            errors.append(_error(field, f"must be at most {MAX_NAME_LENGTH} characters; got {len(name)}"))
        if any(unicodedata.category(ch) == "Cc" for ch in name):
            # A line break inside a quoted cell would break exports and lists later.
            errors.append(_error(field, "must not contain line breaks or control characters"))
    if names["name_en"] is None and names["name_km"] is None:
        errors.append(_error("name_en", "at least one of name_en or name_km is required"))

    row: LocationRow = {
        "code": code,
        "level": level,
        "name_en": names["name_en"],
        "name_km": names["name_km"],
        "parent_code": parent_code,
    }
    return row, errors


def _check_code_and_level(code: str, level: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if not code:
        errors.append(_error("code", "code is required"))
    elif not _is_digits(code):
        errors.append(_error("code", "code must contain only the digits 0-9"))

    if not level:
        errors.append(_error("level", "level is required"))
    elif level == "province":
        errors.append(_error("level", "province rows cannot be imported; the 25 provinces are seeded"))
    elif level not in _PARENT_LEVEL:
        errors.append(_error("level", f"level must be one of district, commune, village; got {level!r}"))
    elif _is_digits(code) and len(code) != LEVEL_DIGITS[level]:
        message = f"a {level} code must have {LEVEL_DIGITS[level]} digits; got {len(code)}"
        if len(code) < LEVEL_DIGITS[level]:
            message += _LEADING_ZEROS_HINT
        errors.append(_error("code", message))
    return errors


def _check_parent(code: str, level: str, parent_code: str) -> list[FieldError]:
    if level not in _PARENT_LEVEL:
        return []  # reported with the level; the expected parent is unknown
    parent_level = _PARENT_LEVEL[level]
    digits = LEVEL_DIGITS[parent_level]
    if not parent_code:
        return [_error("parent_code", f"parent_code is required for a {level}")]
    if not _is_digits(parent_code):
        return [_error("parent_code", "parent_code must contain only the digits 0-9")]
    if len(parent_code) != digits:
        message = f"the parent of a {level} is a {parent_level}: {digits} digits; got {len(parent_code)}"
        if len(parent_code) < digits:
            message += _LEADING_ZEROS_HINT
        return [_error("parent_code", message)]
    if _is_digits(code) and len(code) == LEVEL_DIGITS[level] and not code.startswith(parent_code):
        return [_error("parent_code", f"parent_code must be the first {digits} digits of the code: {code[:digits]}")]
    return []


def _is_digits(value: str) -> bool:
    # str.isdigit alone would accept Khmer and superscript digits.
    return value.isascii() and value.isdigit()


def _error(field: str, msg: str) -> FieldError:
    return {"loc": [field], "msg": msg}
