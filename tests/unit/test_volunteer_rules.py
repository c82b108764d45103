"""Unit tests of the volunteer rules (age, consent, dates, email) and the pure parts of the CSV importer."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from services.registry.volunteers import importer
from services.registry.volunteers.rules import (
    PersonFacts, age_on, check_person, is_plausible_email, local_today,
)
from shared.errors import ProblemError

NOW = datetime(2026, 3, 10, 17, 30, tzinfo=timezone.utc)  # 00:30 on 11 March in Phnom Penh
TODAY = date(2026, 3, 11)


def facts(born: date, *, given: bool = True, given_at: datetime | None = None, guardian: bool = False) -> PersonFacts:
    return PersonFacts(born, given, given_at, "Chan Dara" if guardian else None, "father" if guardian else None)


def locs(errors: list[dict]) -> list[list]:
    return [e["loc"] for e in errors]


# ---- age and dates ------------------------------------------------------------------------------
@pytest.mark.parametrize(("born", "on", "age"), [
    (date(2010, 3, 11), date(2020, 3, 11), 10),  # the birthday itself
    (date(2010, 3, 12), date(2020, 3, 11), 9),  # the day before
    (date(2008, 2, 29), date(2018, 2, 28), 9),  # a leap-day child is a year older on 1 March
    (date(2008, 2, 29), date(2018, 3, 1), 10),
    (date(2000, 12, 31), date(2001, 1, 1), 0),
])
def test_age_counts_completed_years(born: date, on: date, age: int):
    assert age_on(born, on) == age


def test_today_is_the_date_in_phnom_penh():
    assert local_today(NOW) == TODAY
    assert local_today(NOW - timedelta(hours=1)) == date(2026, 3, 10)


def test_ten_on_the_registration_day_is_old_enough_the_day_before_is_not():
    assert check_person(facts(date(2016, 3, 11), guardian=True), TODAY, NOW) == []
    errors = check_person(facts(date(2016, 3, 12), guardian=True), TODAY, NOW)
    assert locs(errors) == [["date_of_birth"]] and "at least 10" in errors[0]["msg"]


def test_a_birth_date_in_the_future_or_over_120_years_ago_is_refused():
    assert locs(check_person(facts(date(2026, 3, 12)), TODAY, NOW)) == [["date_of_birth"]]
    assert locs(check_person(facts(date(1900, 1, 1)), TODAY, NOW)) == [["date_of_birth"]]


# ---- consent ------------------------------------------------------------------------------------
def test_under_18_needs_the_guardian_name_and_relation():
    seventeen = date(2008, 3, 12)  # 18 tomorrow
    assert locs(check_person(facts(seventeen), TODAY, NOW)) == [["consent", "guardian_name"], ["consent", "guardian_relation"]]
    assert check_person(facts(seventeen, guardian=True), TODAY, NOW) == []
    assert check_person(facts(date(2008, 3, 11)), TODAY, NOW) == []  # 18 today


def test_the_rules_hold_at_the_registration_date_not_today():
    """A volunteer registered at 17 keeps the guardian on record after turning 18."""
    born = date(2008, 6, 1)
    assert locs(check_person(facts(born), date(2025, 6, 1), NOW)) == [["consent", "guardian_name"], ["consent", "guardian_relation"]]
    assert check_person(facts(born), date(2026, 6, 1), NOW) == []


def test_consent_must_be_given_and_its_time_plausible():
    adult = date(2000, 1, 1)
    assert locs(check_person(facts(adult, given=False), TODAY, NOW)) == [["consent", "given"]]
    assert locs(check_person(facts(adult, given_at=NOW + timedelta(hours=1)), TODAY, NOW)) == [["consent", "given_at"]]
    assert check_person(facts(adult, given_at=NOW + timedelta(minutes=2)), TODAY, NOW) == []  # clock skew
    assert locs(check_person(facts(adult, given_at=datetime(1999, 1, 1, tzinfo=timezone.utc)), TODAY, NOW)) == [["consent", "given_at"]]


@pytest.mark.parametrize(("email", "ok"), [
    ("sokha@example.org", True), ("sokha.chan+vmc@mail.example.com.kh", True),
    ("sokha@localhost", False), ("sokha at example.org", False), ("@example.org", False),
    ("sokha@@example.org", False), ("sokha@example..org", False), ("sokha@-example.org", False),
    ("s" * 65 + "@example.org", False),
])
def test_email_shape(email: str, ok: bool):
    assert is_plausible_email(email) is ok


# ---- importer: whole-file checks ----------------------------------------------------------------
HEADER = "name_latin,name_km,sex,date_of_birth,residence_province,consent_given"


def file_problem(call) -> dict:
    with pytest.raises(ProblemError) as caught:
        call()
    assert caught.value.status == 422
    return {"detail": caught.value.detail, "errors": caught.value.errors}


def test_the_header_is_checked_case_insensitively_and_a_bom_is_dropped():
    columns, rows = importer.read_rows(importer.decode(("\ufeff" + HEADER.upper() + "\nDara,,male,2000-01-01,12,yes\n\n").encode()))
    assert columns == HEADER.split(",") and rows == [(2, ["Dara", "", "male", "2000-01-01", "12", "yes"])]


@pytest.mark.parametrize(("header", "says"), [
    (HEADER + ",nickname", "unknown column(s) in header: nickname"),
    (HEADER + ",id", "unknown column(s) in header: id"),
    (HEADER.replace(",sex", ""), "missing column(s) in header: sex"),
    (HEADER + ",sex", "duplicate column(s) in header: sex"),
    (HEADER.replace("name_latin,name_km,", ""), "name_latin or name_km"),
    (HEADER + ",external_id", "external_system and external_id come together"),
    (HEADER + ",", "header column 7 has no name"),
])
def test_a_wrong_header_is_refused_for_the_whole_file(header: str, says: str):
    assert says in file_problem(lambda: importer.check_header(header.split(",")))["detail"]


def test_broken_utf8_names_the_row():
    raw = (HEADER + "\nDara,,male,2000-01-01,12,yes\nSokh").encode() + b"\xe1,,female\n"
    assert file_problem(lambda: importer.decode(raw))["detail"].startswith("row 3: the file is not valid UTF-8")


def test_malformed_csv_names_the_row():
    text = HEADER + '\nDara,,male,2000-01-01,12,yes\n"Sokha,,female,2000-01-01,12,yes\n'
    assert "row 3: malformed CSV" in file_problem(lambda: importer.read_rows(text))["detail"]


# ---- importer: rows -----------------------------------------------------------------------------
COLUMNS = [*HEADER.split(","), "phone", "external_system", "external_id", "guardian_name"]


def parse(**cells: str):
    values = {"name_latin": "Dara", "sex": "Female", "date_of_birth": "2000-01-01", "residence_province": "12",
              "consent_given": "yes", **cells}
    return importer.parse_row(COLUMNS, 7, [values.get(c, "") for c in COLUMNS])


def test_a_good_row_is_the_wire_model_with_its_name_keys():
    row, errors = parse(name_km=" \u179f\u17b8\u17d2\u179a ", phone="០១២ ៣៤៥ ៦៧៨", external_system="ngo", external_id="42")
    assert errors == [] and row.number == 7
    assert (row.data.sex, row.data.phone, row.data.consent.given) == ("female", "+85512345678", True)
    assert row.latin_key == "dara" and row.km_key == "\u179f\u17d2\u179a\u17b8"  # syllable in canonical order
    assert row.external == ("ngo", "42")


@pytest.mark.parametrize(("cells", "column"), [
    ({"sex": "F"}, "sex"),
    ({"date_of_birth": "01/02/2000"}, "date_of_birth"),
    ({"date_of_birth": "2001-02-29"}, "date_of_birth"),
    ({"phone": "12 34"}, "phone"),
    ({"consent_given": "perhaps"}, "consent_given"),
    ({"consent_given": ""}, "consent_given"),
    ({"residence_province": "1"}, "residence_province"),
    ({"name_latin": ""}, "name_latin"),
    ({"name_latin": "!!"}, "name_latin"),
    ({"name_latin": "D" * 201}, "name_latin"),
    ({"guardian_name": "G" * 201}, "guardian_name"),
    ({"external_system": "ngo"}, "external_id"),
    ({"external_id": "42"}, "external_system"),
])
def test_a_bad_cell_is_reported_under_its_column(cells: dict, column: str):
    row, errors = parse(**cells)
    assert row is None and [column] in locs(errors), errors


def test_cells_beyond_the_header_are_an_error_but_empty_padding_is_not():
    assert importer.parse_row(COLUMNS, 2, ["Dara", "", "male", "2000-01-01", "12", "yes", "", "", "", "", "", ""])[1] == []
    row, errors = importer.parse_row(COLUMNS, 2, ["Dara", "", "male", "2000-01-01", "12", "yes", "", "", "", "", "extra"])
    assert row is None and locs(errors) == [["row"]]
