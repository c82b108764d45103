"""DHIS2 export: periods, the mapping file's checks, and figures turned into a dataValueSets payload."""
from __future__ import annotations

import copy
import json
from datetime import date

import pytest

from services.analytics.dhis2 import (
    EXAMPLE_MAPPING,
    MappingError,
    Period,
    data_value_set,
    dhis2_value,
    load_mapping,
    parse_mapping,
    parse_period,
)
from services.analytics.queries import REPORTS


@pytest.mark.parametrize(("text", "period"), [
    ("2026", Period("2026", date(2026, 1, 1), date(2026, 12, 31))),
    ("202603", Period("202603", date(2026, 3, 1), date(2026, 3, 31))),
    ("202602", Period("202602", date(2026, 2, 1), date(2026, 2, 28))),
    ("202412", Period("202412", date(2024, 12, 1), date(2024, 12, 31))),
    ("2026Q1", Period("2026Q1", date(2026, 1, 1), date(2026, 3, 31))),
    ("2026Q4", Period("2026Q4", date(2026, 10, 1), date(2026, 12, 31))),
    ("2026W09", Period("2026W9", date(2026, 2, 23), date(2026, 3, 1))),
    ("2026W9", Period("2026W9", date(2026, 2, 23), date(2026, 3, 1))),
    ("2026W1", Period("2026W1", date(2025, 12, 29), date(2026, 1, 4))),  # ISO week 1 starts in December
    ("2026W53", Period("2026W53", date(2026, 12, 28), date(2027, 1, 3))),  # 2026 starts on a Thursday
])
def test_periods_are_their_first_and_last_day(text, period):
    assert parse_period(text) == period


@pytest.mark.parametrize("text", ["", "26", "2026-03", "202613", "202600", "2026Q0", "2026Q5", "2026W0",
                                  "2026W54", "2025W53", "2026W123", "2026S1", "March 2026", "20260305"])
def test_a_malformed_period_names_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"accepted: 2026 \(year\), 202603 \(month\), 2026Q1 \(quarter\)"):
        parse_period(text)


def checks() -> dict:
    return {"figures": {name: report.measures for name, report in REPORTS.items()},
            "dimensions": REPORTS["hours"].dimensions}


def test_the_committed_example_is_a_valid_mapping_of_todays_figures():
    mapping = load_mapping(EXAMPLE_MAPPING, **checks())
    assert len(mapping.org_units) == 25  # every province of the gazetteer
    assert mapping.queries() == [("hours", ("province", "sex")), ("hours", ("province",)),
                                 ("volunteers", ("province", "sex", "age_band")), ("beneficiaries", ("province",))]


def example() -> dict:
    return json.loads(EXAMPLE_MAPPING.read_text())


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("dataSet"), "`dataSet` must be a non-empty string"),
    (lambda m: m.update(orgUnits=["KhPrv01Unit"]), "`orgUnits` must map province codes"),
    (lambda m: m.update(dataValues=[]), "`dataValues` must be a non-empty list"),
    (lambda m: m["dataValues"][0].update(figure="hourz"), r"dataValues\[0\]: figure 'hourz' is none of"),
    (lambda m: m["dataValues"][1].update(measure="minutes"), r"dataValues\[1\]: hours has no measure 'minutes'"),
    (lambda m: m["dataValues"][0].update(disaggregation=["gender"]), r"unknown dimension\(s\) \['gender'\]"),
    (lambda m: m["dataValues"][0]["categoryOptionCombos"].update({"female|15-17": "CocX"}),
     r"do not have one value per dimension"),
    (lambda m: m["dataValues"][1].pop("categoryOptionCombo"), r"dataValues\[1\]: `categoryOptionCombo`"),
    (lambda m: m["dataValues"].append(copy.deepcopy(m["dataValues"][3])),
     r"dataElement VmcBenefSex with categoryOptionCombo CocFemale01 is already filled by dataValues\[3\]"),
])
def test_a_mapping_mistake_is_named_where_it_is(change, message):
    mapping = example()
    change(mapping)
    with pytest.raises(MappingError, match=message):
        parse_mapping(mapping, **checks())


def test_an_unreadable_mapping_file_says_which(tmp_path):
    path = tmp_path / "mapping.json"
    path.write_text("{not json")
    with pytest.raises(MappingError, match="cannot read the DHIS2 mapping .*mapping.json"):
        load_mapping(path)


def test_values_are_text_as_dhis2_stores_them():
    assert [dhis2_value(v) for v in (12, 12.0, 12.5, 2.345, 0.1 + 0.2, 1e7)] == [
        "12", "12", "12.5", "2.35", "0.3", "10000000"]


MAPPING = parse_mapping({
    "dataSet": "VmcMonthly1",
    "attributeOptionCombo": "AocVmc00001",
    "orgUnits": {"12": "KhPrv12Unit", "17": "KhPrv17Unit"},
    "dataValues": [
        {"figure": "hours", "measure": "hours", "disaggregation": ["sex"], "dataElement": "VmcHoursSex",
         "categoryOptionCombos": {"female": "CocFemale01", "male": "CocMale0001"}},
        {"figure": "volunteers", "measure": "volunteers", "disaggregation": ["sex", "age_band"],
         "dataElement": "VmcVolSxAge", "categoryOptionCombos": {"female|18-24": "CocF1824Age"}},
        {"figure": "beneficiaries", "measure": "beneficiaries_children", "dataElement": "VmcBenefChl",
         "categoryOptionCombo": "HllvX50cXC0"},
    ],
})


def test_figures_become_data_values_and_what_cannot_be_placed_is_reported():
    figures = {
        ("hours", ("province", "sex")): [
            {"province": "12", "sex": "female", "hours": 40.5, "activities": 9, "volunteers": 6, "suppressed": False},
            {"province": "12", "sex": "male", "hours": None, "activities": None, "volunteers": None, "suppressed": True},
            {"province": "17", "sex": "unknown", "hours": 12.0, "activities": 5, "volunteers": 5, "suppressed": False},
            {"province": "25", "sex": "male", "hours": 30.25, "activities": 8, "volunteers": 7, "suppressed": False},
            {"province": None, "sex": "female", "hours": 7.0, "activities": 5, "volunteers": 5, "suppressed": False},
        ],
        ("volunteers", ("province", "sex", "age_band")): [
            {"province": "17", "sex": "female", "age_band": "18-24", "volunteers": 11, "suppressed": False},
        ],
        ("beneficiaries", ("province",)): [
            {"province": "12", "beneficiaries_children": 120, "volunteers": 13, "suppressed": False},
        ],
    }
    payload = data_value_set(MAPPING, parse_period("2026W09"), figures)
    common = {"period": "2026W9", "attributeOptionCombo": "AocVmc00001"}
    assert payload["dataSet"] == "VmcMonthly1" and payload["period"] == "2026W9"
    assert payload["dataValues"] == [
        {"dataElement": "VmcHoursSex", "orgUnit": "KhPrv12Unit", "categoryOptionCombo": "CocFemale01", "value": "40.5", **common},
        {"dataElement": "VmcVolSxAge", "orgUnit": "KhPrv17Unit", "categoryOptionCombo": "CocF1824Age", "value": "11", **common},
        {"dataElement": "VmcBenefChl", "orgUnit": "KhPrv12Unit", "categoryOptionCombo": "HllvX50cXC0", "value": "120", **common},
    ]
    assert payload["unmapped"] == [
        {"figure": "hours", "measure": "hours", "dataElement": "VmcHoursSex", "province": "17", "sex": "unknown",
         "value": "12", "reason": "sex = unknown has no categoryOptionCombo for VmcHoursSex"},
        {"figure": "hours", "measure": "hours", "dataElement": "VmcHoursSex", "province": "25", "sex": "male",
         "value": "30.25", "reason": "province 25 has no orgUnit in the mapping"},
        {"figure": "hours", "measure": "hours", "dataElement": "VmcHoursSex", "province": None, "sex": "female",
         "value": "7", "reason": "the cell has no province (no location, or no residence, recorded)"},
    ]
    # The suppressed cell is left out, counted, and its (null) figure appears nowhere.
    assert payload["summary"] == {"dataValues": 3, "suppressed": 1, "unmapped": 3}


def test_without_an_attribute_option_combo_the_values_carry_none():
    mapping = parse_mapping({**example(), "dataValues": example()["dataValues"][1:2]})
    payload = data_value_set(mapping, parse_period("2026"), {
        ("hours", ("province",)): [{"province": "01", "activities": 7, "suppressed": False}]})
    assert payload["dataValues"] == [{"dataElement": "VmcActivity", "period": "2026", "orgUnit": "KhPrv01Unit",
                                      "categoryOptionCombo": "HllvX50cXC0", "value": "7"}]
