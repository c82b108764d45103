"""Unit tests of services.registry.gazetteer: the seeded provinces and location CSV validation."""
from __future__ import annotations

import re
import unicodedata

import pytest

from services.registry.gazetteer import LEVEL_DIGITS, MAX_NAME_LENGTH, PROVINCES, parse_location_csv
from services.registry.normalize import normalize_name

HEADER = "code,level,name_en,name_km,parent_code"


def csv_text(*rows: str, header: str = HEADER) -> str:
    return "\n".join((header, *rows)) + "\n"


def messages(errors: list[dict], index: int) -> dict[str, list[str]]:
    """Messages of spreadsheet row `index`, by field, for readable assertions."""
    [entry] = [e for e in errors if e["index"] == index]
    by_field: dict[str, list[str]] = {}
    for error in entry["errors"]:
        [field] = error["loc"]
        by_field.setdefault(field, []).append(error["msg"])
    return by_field


# --- PROVINCES ---------------------------------------------------------------------------------

EXPECTED_PROVINCES_EN = {
    "01": "Banteay Meanchey", "02": "Battambang", "03": "Kampong Cham", "04": "Kampong Chhnang",
    "05": "Kampong Speu", "06": "Kampong Thom", "07": "Kampot", "08": "Kandal", "09": "Koh Kong",
    "10": "Kratie", "11": "Mondul Kiri", "12": "Phnom Penh", "13": "Preah Vihear", "14": "Prey Veng",
    "15": "Pursat", "16": "Ratanak Kiri", "17": "Siemreap", "18": "Preah Sihanouk", "19": "Stung Treng",
    "20": "Svay Rieng", "21": "Takeo", "22": "Oddar Meanchey", "23": "Kep", "24": "Pailin",
    "25": "Tbong Khmum",
}


def test_there_are_25_provinces_in_code_order() -> None:
    assert len(PROVINCES) == 25
    assert [code for code, _, _ in PROVINCES] == [f"{n:02d}" for n in range(1, 26)]


def test_province_codes_and_english_names() -> None:
    assert {code: name_en for code, name_en, _ in PROVINCES} == EXPECTED_PROVINCES_EN


@pytest.mark.parametrize(
    ("code", "name_km"),
    [
        ("01", "បន្ទាយមានជ័យ"),
        ("02", "បាត់ដំបង"),
        ("08", "កណ្ដាល"),
        ("12", "ភ្នំពេញ"),
        ("15", "ពោធិ៍សាត់"),
        ("17", "សៀមរាប"),
        ("22", "ឧត្តរមានជ័យ"),
        ("24", "ប៉ៃលិន"),
        ("25", "ត្បូងឃ្មុំ"),
    ],
)
def test_province_khmer_names(code: str, name_km: str) -> None:
    assert dict((c, km) for c, _, km in PROVINCES)[code] == name_km


def test_province_names_are_unique() -> None:
    assert len({name_en for _, name_en, _ in PROVINCES}) == 25
    assert len({normalize_name(name_km) for _, _, name_km in PROVINCES}) == 25


@pytest.mark.parametrize(("code", "name_en", "name_km"), PROVINCES)
def test_province_khmer_name_is_clean_khmer_in_canonical_order(code: str, name_en: str, name_km: str) -> None:
    assert all("\u1780" <= ch <= "\u17ff" for ch in name_km), f"{code} has a non-Khmer character"
    assert unicodedata.is_normalized("NFC", name_km)
    # Typed in the recommended component order, so the seeded name is its own search key.
    assert normalize_name(name_km) == name_km
    assert name_en == name_en.strip() and name_en


def test_level_digits() -> None:
    assert LEVEL_DIGITS == {"province": 2, "district": 4, "commune": 6, "village": 8}


# --- parse_location_csv: valid files -----------------------------------------------------------


def test_parse_valid_rows_of_every_importable_level() -> None:
    rows, errors = parse_location_csv(
        csv_text(
            "0102,district,Mongkol Borei,មង្គលបុរី,01",
            "010201,commune,Banteay Neang,បន្ទាយនាង,0102",
            "01020101,village,Ou Thum,អូរធំ,010201",
        )
    )
    assert errors == []
    assert rows == [
        {"code": "0102", "level": "district", "name_en": "Mongkol Borei", "name_km": "មង្គលបុរី", "parent_code": "01"},
        {"code": "010201", "level": "commune", "name_en": "Banteay Neang", "name_km": "បន្ទាយនាង", "parent_code": "0102"},
        {"code": "01020101", "level": "village", "name_en": "Ou Thum", "name_km": "អូរធំ", "parent_code": "010201"},
    ]


def test_parse_header_only_gives_nothing() -> None:
    assert parse_location_csv(HEADER) == ([], [])
    assert parse_location_csv(HEADER + "\r\n") == ([], [])


def test_parse_accepts_bom_and_crlf() -> None:
    text = "\ufeff" + HEADER + "\r\n0102,district,Mongkol Borei,,01\r\n"
    rows, errors = parse_location_csv(text)
    assert errors == []
    assert [row["code"] for row in rows] == ["0102"]


def test_parse_header_in_any_order_case_and_spacing() -> None:
    text = csv_text("01,Mongkol Borei,0102,District", header=" Parent_Code ,NAME_EN, code ,Level,name_km")
    rows, errors = parse_location_csv(text)
    assert errors == []
    assert rows == [{"code": "0102", "level": "district", "name_en": "Mongkol Borei", "name_km": None, "parent_code": "01"}]


def test_parse_trims_cells_and_normalises_names_to_nfc() -> None:
    decomposed = "Pre\u0301ah"
    rows, errors = parse_location_csv(csv_text(f" 0102 , district ,  {decomposed}  , ,01 "))
    assert errors == []
    [row] = rows
    assert row["code"] == "0102" and row["parent_code"] == "01" and row["level"] == "district"
    assert row["name_en"] == "Pr\u00e9ah"
    assert row["name_km"] is None


def test_parse_only_khmer_name_is_enough() -> None:
    rows, errors = parse_location_csv(csv_text("0102,district,,មង្គលបុរី,01"))
    assert errors == []
    assert rows[0]["name_en"] is None and rows[0]["name_km"] == "មង្គលបុរី"


def test_parse_keeps_khmer_name_as_typed() -> None:
    # Storage keeps what was given (NFC only); the search key is computed elsewhere.
    typed = "\u179f\u17b8\u17d2\u179a"  # ស + ី + ្ + រ
    rows, _ = parse_location_csv(csv_text(f"0102,district,,{typed},01"))
    assert rows[0]["name_km"] == typed


def test_parse_quoted_cells_with_commas_and_quotes() -> None:
    rows, errors = parse_location_csv(csv_text('0102,district,"Mongkol Borei, ""Old"" town",,01'))
    assert errors == []
    assert rows[0]["name_en"] == 'Mongkol Borei, "Old" town'


def test_parse_skips_blank_rows_but_counts_them() -> None:
    text = csv_text("", ",,,,", "0102,district,,,01", "  ,  ,,,")
    rows, errors = parse_location_csv(text)
    assert rows == []
    assert [e["index"] for e in errors] == [4]


def test_parse_ignores_empty_trailing_cells() -> None:
    rows, errors = parse_location_csv(csv_text("0102,district,Mongkol Borei,,01,,,"))
    assert errors == []
    assert len(rows) == 1


def test_parse_name_of_exactly_max_length_is_accepted() -> None:
    rows, errors = parse_location_csv(csv_text(f"0102,district,{'a' * MAX_NAME_LENGTH},{'ក' * MAX_NAME_LENGTH},01"))
    assert errors == []
    assert len(rows) == 1


# --- parse_location_csv: header problems -------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("code,level,name_en,name_km", "missing column.*parent_code"),
        ("code,level,name_en,parent_code", "missing column.*name_km"),
        ("code,level,name_en,name_km,parent_code,population", "unknown column.*population"),
        ("code,level,name,name_km,parent_code", "unknown column.*name"),
        ("code,level,name_en,name_km,parent_code,Population", "unknown column.*Population"),
        ("code,level,name_en,name_km,parent_code,code", "duplicate column.*code"),
        ("code,level,name_en,,name_km,parent_code", "column 4 has no name"),
        ("0102,district,Mongkol Borei,,01", "unknown column.*0102"),  # header row forgotten
    ],
)
def test_parse_rejects_bad_header(header: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_location_csv(header + "\n0102,district,Mongkol Borei,,01\n")


@pytest.mark.parametrize("text", ["", "\ufeff"])
def test_parse_rejects_empty_file(text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_location_csv(text)


def test_parse_rejects_blank_first_line_as_missing_header() -> None:
    with pytest.raises(ValueError, match="missing column"):
        parse_location_csv("\n" + HEADER + "\n")


def test_parse_requires_decoded_text() -> None:
    with pytest.raises(TypeError, match="decoded"):
        parse_location_csv(HEADER.encode())  # type: ignore[arg-type]


def test_parse_reports_malformed_csv_with_its_row() -> None:
    huge = "x" * 200_000  # beyond the csv module's field size limit
    with pytest.raises(ValueError, match="row 3: malformed CSV"):
        parse_location_csv(csv_text("0102,district,A,,01", f'0103,district,"{huge}",,01'))


# --- parse_location_csv: row errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        (",district,A,,01", "code", "code is required"),
        ("01a2,district,A,,01", "code", "only the digits"),
        ("01-2,district,A,,01", "code", "only the digits"),
        ("០១០២,district,A,,01", "code", "only the digits"),  # Khmer digits
        ("102,district,A,,01", "code", "4 digits; got 3 .*leading zeros"),
        ("01020,district,A,,01", "code", "4 digits; got 5"),
        ("0102,commune,A,,01", "code", "a commune code must have 6 digits; got 4"),
        ("0102010,village,A,,010201", "code", "8 digits; got 7"),
        ("0102,,A,,01", "level", "level is required"),
        ("0102,town,A,,01", "level", "one of district, commune, village; got 'town'"),
        ("01,province,Banteay Meanchey,,", "level", "provinces are seeded"),
        ("0102,district,A,,", "parent_code", "required for a district"),
        ("010201,commune,A,,", "parent_code", "required for a commune"),
        ("0102,district,A,,0x", "parent_code", "only the digits"),
        ("0102,district,A,,1", "parent_code", "province: 2 digits; got 1 .*leading zeros"),
        ("0102,district,A,,0102", "parent_code", "2 digits; got 4"),
        ("010201,commune,A,,01", "parent_code", "district: 4 digits; got 2"),
        ("0102,district,A,,02", "parent_code", "first 2 digits of the code: 01"),
        ("010201,commune,A,,0103", "parent_code", "first 4 digits of the code: 0102"),
        ("01020101,village,A,,010202", "parent_code", "first 6 digits of the code: 010201"),
        ("0102,district,,,01", "name_en", "at least one of name_en or name_km"),
        ("0102,district,  ,  ,01", "name_en", "at least one of name_en or name_km"),
        (f"0102,district,{'a' * (MAX_NAME_LENGTH + 1)},,01", "name_en", "at most 200 characters; got 201"),
        (f"0102,district,A,{'ក' * (MAX_NAME_LENGTH + 1)},01", "name_km", "at most 200 characters"),
        ('0102,district,"Mongkol\nBorei",,01', "name_en", "line breaks"),
        ("0102,district,A,,01,extra", "row", "6 cells but the header has 5 columns"),
    ],
)
def test_parse_row_error(row: str, field: str, message: str) -> None:
    rows, errors = parse_location_csv(csv_text(row))
    assert rows == []
    assert len(errors) == 1 and errors[0]["index"] == 2
    found = messages(errors, 2)
    assert field in found, found
    assert any(re.search(message, msg) for msg in found[field]), found


def test_parse_error_shape() -> None:
    _, errors = parse_location_csv(csv_text("0102,district,A,,02"))
    assert errors == [
        {"index": 2, "errors": [{"loc": ["parent_code"], "msg": "parent_code must be the first 2 digits of the code: 01"}]}
    ]


def test_parse_collects_every_error_of_a_row() -> None:
    _, errors = parse_location_csv(csv_text("102,district,,,1"))
    found = messages(errors, 2)
    assert set(found) == {"code", "parent_code", "name_en"}


def test_parse_unknown_level_does_not_guess_parent_rules() -> None:
    _, errors = parse_location_csv(csv_text("0102,town,A,,"))
    assert set(messages(errors, 2)) == {"level"}


def test_parse_short_row_reports_missing_cells() -> None:
    _, errors = parse_location_csv(csv_text("0102,district"))
    assert set(messages(errors, 2)) == {"parent_code", "name_en"}


def test_parse_duplicate_code_is_an_error_on_the_later_row() -> None:
    rows, errors = parse_location_csv(
        csv_text(
            "0102,district,Mongkol Borei,,01",
            "0103,district,Phnum Srok,,01",
            "0102,district,Mongkol Borei again,,01",
            "0102,district,and again,,01",
        )
    )
    assert [row["code"] for row in rows] == ["0102", "0103"]
    assert [e["index"] for e in errors] == [4, 5]
    assert messages(errors, 4) == {"code": ["duplicate code 0102: already on row 2"]}
    assert messages(errors, 5) == {"code": ["duplicate code 0102: already on row 2"]}


def test_parse_duplicate_of_an_invalid_row_is_still_a_duplicate() -> None:
    _, errors = parse_location_csv(csv_text("0102,district,,,01", "0102,district,Mongkol Borei,,01"))
    assert [e["index"] for e in errors] == [2, 3]
    assert messages(errors, 3) == {"code": ["duplicate code 0102: already on row 2"]}


def test_parse_row_numbers_count_records_not_lines() -> None:
    # A quoted cell spanning two lines is one spreadsheet row.
    text = csv_text('0102,district,"Mongkol\nBorei",,01', "0103,district,A,,02")
    _, errors = parse_location_csv(text)
    assert [e["index"] for e in errors] == [2, 3]


def test_parse_returns_valid_rows_alongside_errors() -> None:
    rows, errors = parse_location_csv(
        csv_text(
            "0102,district,Mongkol Borei,,01",
            "0103,district,,,01",
            "010201,commune,Banteay Neang,,0102",
            "01020101,province,X,,010201",
        )
    )
    assert [row["code"] for row in rows] == ["0102", "010201"]
    assert [e["index"] for e in errors] == [3, 5]


def test_parse_does_not_check_parent_existence() -> None:
    # 2601's province does not exist; that is the caller's check against the database.
    rows, errors = parse_location_csv(csv_text("2601,district,Nowhere,,26"))
    assert errors == []
    assert rows[0]["parent_code"] == "26"
