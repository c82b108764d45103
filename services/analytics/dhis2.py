"""DHIS2 export: a period and the mapping file turn analytics figures into a `dataValueSets` payload.

Pure: `parse_period`, `parse_mapping`/`load_mapping` and `data_value_set` do no query; the route
(export_endpoints.py) asks the figures each mapping entry needs and hands them over.

Periods (DHIS2 period syntax): `2026` (year), `202603` (month), `2026Q1` (quarter), `2026W9` or `2026W09`
(ISO week, Monday to Sunday, as DHIS2's weekly periods are). The payload names the period as DHIS2 writes
it (`2026W9`). Dates are local (Asia/Phnom_Penh), as the store's activity dates are.

The mapping file (JSON; `VMC_ANALYTICS_DHIS2_MAPPING`, default `dhis2_mapping.example.json` beside this
module) says which figures the DHIS2 data set receives and under which identifiers:

    {
      "dataSet": "VmcMonthly1",                 # the DHIS2 data set the values belong to
      "attributeOptionCombo": "HllvX50cXC0",    # optional, written on every data value
      "orgUnits": {"12": "KhPhnomPen1", ...},   # province (gazetteer code) -> organisation unit
      "dataValues": [
        {"figure": "hours", "measure": "hours", "disaggregation": ["sex"],
         "dataElement": "VmcHours001",
         "categoryOptionCombos": {"female": "cocFemale01", "male": "cocMale0001"}},
        {"figure": "volunteers", "measure": "volunteers", "disaggregation": ["sex", "age_band"],
         "dataElement": "VmcVolunt01",
         "categoryOptionCombos": {"female|15-17": "cocF1517001", ...}},
        {"figure": "beneficiaries", "measure": "beneficiaries_female",
         "dataElement": "VmcBenef001", "categoryOptionCombo": "cocFemale01"}
      ]
    }

Each entry of `dataValues` reads `measure` of the analytics figure `figure` (`/analytics/<figure>`) grouped
by province and the `disaggregation` dimensions, in that order. With a disaggregation,
`categoryOptionCombos` maps the cell's values joined by `|` (a missing value is `unknown`) to the category
option combo; without one, `categoryOptionCombo` names the single combo (DHIS2's default combo when the
data element has no categories). Hours and activities are placed where the activity happened, volunteers
by residence, as in the figures themselves.

In the payload, a suppressed cell is left out (and counted in `summary.suppressed`); a cell the mapping
cannot place (its province has no org unit, or its combination no category option combo) is listed in
`unmapped` with its value and the reason, and counted in `summary.unmapped`: nothing is dropped silently.
DHIS2 reads the fields it knows (`dataSet`, `period`, `dataValues`, ...) from a data value set; the extra
`unmapped` and `summary` are this export's import notes for whoever sends it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

PERIOD_FORMS = ("2026 (year)", "202603 (month)", "2026Q1 (quarter)", "2026W9 or 2026W09 (ISO week)")
EXAMPLE_MAPPING = Path(__file__).with_name("dhis2_mapping.example.json")
UNKNOWN = "unknown"  # a cell's missing dimension value, as the mapping's combination keys write it

_PERIOD = re.compile(r"(?P<year>\d{4})(?:(?P<month>\d{2})|Q(?P<quarter>\d)|W(?P<week>\d{1,2}))?")


@dataclass(frozen=True)
class Period:
    code: str  # as DHIS2 writes it
    start: date
    end: date  # inclusive


def parse_period(text: str) -> Period:
    """A DHIS2 period as its first and last day; ValueError naming the accepted forms when it is none."""
    match = _PERIOD.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError
        year = int(match["year"])
        if match["month"] is not None:
            month = int(match["month"])
            start = date(year, month, 1)
            end = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
            return Period(f"{year}{month:02d}", start, end)
        if match["quarter"] is not None:
            quarter = int(match["quarter"])
            if not 1 <= quarter <= 4:
                raise ValueError
            start = date(year, 3 * quarter - 2, 1)
            end = date(year + quarter // 4, 3 * quarter % 12 + 1, 1) - timedelta(days=1)
            return Period(f"{year}Q{quarter}", start, end)
        if match["week"] is not None:
            week = int(match["week"])
            start = date.fromisocalendar(year, week, 1)  # ValueError for week 0, or 53 in a 52-week year
            return Period(f"{year}W{week}", start, start + timedelta(days=6))
        return Period(f"{year}", date(year, 1, 1), date(year, 12, 31))
    except ValueError:
        raise ValueError(f"period {text!r} is not a DHIS2 period; accepted: {', '.join(PERIOD_FORMS)}") from None


class MappingError(ValueError):
    """The mapping file is not one this export can use; the message says where."""


@dataclass(frozen=True)
class ValueMapping:
    figure: str
    measure: str
    disaggregation: tuple[str, ...]
    data_element: str
    combos: Mapping[str, str]  # the cell's disaggregation values joined by "|" -> category option combo

    @property
    def group_by(self) -> tuple[str, ...]:
        return ("province", *self.disaggregation)


@dataclass(frozen=True)
class Dhis2Mapping:
    data_set: str
    attribute_option_combo: str | None
    org_units: Mapping[str, str]
    values: tuple[ValueMapping, ...]

    def queries(self) -> list[tuple[str, tuple[str, ...]]]:
        """The (figure, group_by) answers the payload needs, each once, in the file's order."""
        return list(dict.fromkeys((v.figure, v.group_by) for v in self.values))


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where}: `{key}` must be a non-empty string")
    return value


def parse_mapping(
    data: Any, figures: Mapping[str, Iterable[str]] | None = None, dimensions: Iterable[str] | None = None
) -> Dhis2Mapping:
    """The mapping file's content, checked; `figures` (figure -> its measures) and `dimensions`, when given,
    are what the analytics answers offer, so a misspelt name fails here rather than as an empty export."""
    if not isinstance(data, Mapping):
        raise MappingError("the mapping must be a JSON object")
    data_set = _text(data, "dataSet", "mapping")
    aoc = data.get("attributeOptionCombo")
    if aoc is not None:
        aoc = _text(data, "attributeOptionCombo", "mapping")
    org_units = data.get("orgUnits")
    if not isinstance(org_units, Mapping) or not all(isinstance(v, str) and v for v in org_units.values()):
        raise MappingError("mapping: `orgUnits` must map province codes to org unit ids")
    entries = data.get("dataValues")
    if not isinstance(entries, list) or not entries:
        raise MappingError("mapping: `dataValues` must be a non-empty list")
    allowed_dims = set(dimensions) - {"province"} if dimensions is not None else None
    values, seen = [], {}
    for n, entry in enumerate(entries):
        where = f"dataValues[{n}]"
        if not isinstance(entry, Mapping):
            raise MappingError(f"{where}: must be an object")
        figure, measure = _text(entry, "figure", where), _text(entry, "measure", where)
        if figures is not None and figure not in figures:
            raise MappingError(f"{where}: figure {figure!r} is none of {sorted(figures)}")
        if figures is not None and measure not in set(figures[figure]):
            raise MappingError(f"{where}: {figure} has no measure {measure!r}; it has {sorted(figures[figure])}")
        disaggregation = entry.get("disaggregation", [])
        if not isinstance(disaggregation, list) or not all(isinstance(d, str) for d in disaggregation):
            raise MappingError(f"{where}: `disaggregation` must be a list of dimension names")
        if allowed_dims is not None and (unknown := set(disaggregation) - allowed_dims):
            raise MappingError(f"{where}: unknown dimension(s) {sorted(unknown)}; allowed: {sorted(allowed_dims)}")
        if disaggregation:
            combos = entry.get("categoryOptionCombos")
            if not isinstance(combos, Mapping) or not combos or not all(isinstance(v, str) and v for v in combos.values()):
                raise MappingError(f"{where}: `categoryOptionCombos` must map {'|'.join(disaggregation)} values to ids")
            if bad := [key for key in combos if len(key.split("|")) != len(disaggregation)]:
                raise MappingError(f"{where}: keys {bad} do not have one value per dimension of {disaggregation}")
        else:
            combos = {"": _text(entry, "categoryOptionCombo", where)}
        data_element = _text(entry, "dataElement", where)
        for coc in combos.values():  # two entries filling one DHIS2 value would overwrite each other on import
            if (data_element, coc) in seen:
                raise MappingError(f"{where}: dataElement {data_element} with categoryOptionCombo {coc} is "
                                   f"already filled by dataValues[{seen[data_element, coc]}]")
            seen[data_element, coc] = n
        values.append(ValueMapping(figure, measure, tuple(disaggregation), data_element, dict(combos)))
    return Dhis2Mapping(data_set, aoc, dict(org_units), tuple(values))


def load_mapping(path: Path | str, **checks: Any) -> Dhis2Mapping:
    """The mapping file at `path`, checked (see `parse_mapping` for `checks`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MappingError(f"cannot read the DHIS2 mapping {path}: {exc}") from None
    return parse_mapping(data, **checks)


def dhis2_value(value: float | int) -> str:
    """A figure as DHIS2 stores values: text, integers without a decimal point, hours to the hundredth."""
    if isinstance(value, int):
        return str(value)
    return format(Decimal(str(round(value, 2))).normalize(), "f")


def data_value_set(
    mapping: Dhis2Mapping, period: Period, figures: Mapping[tuple[str, tuple[str, ...]], Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """The payload: `figures[(figure, group_by)]` are that answer's rows (after suppression) for `period`."""
    data_values: list[dict[str, Any]] = []
    unmapped: list[dict[str, Any]] = []
    suppressed = 0
    for vm in mapping.values:
        for row in figures.get((vm.figure, vm.group_by), ()):
            if row.get("suppressed"):
                suppressed += 1
                continue
            value = row.get(vm.measure)
            if value is None:  # a measure with nothing to say for this cell (e.g. no entry with beneficiaries)
                continue
            province = row.get("province")
            combo_key = "|".join(UNKNOWN if row.get(d) is None else str(row.get(d)) for d in vm.disaggregation)
            org_unit = mapping.org_units.get(province) if province is not None else None
            coc = vm.combos.get(combo_key)
            if org_unit is None or coc is None:
                if province is None:
                    reason = "the cell has no province (no location, or no residence, recorded)"
                elif org_unit is None:
                    reason = f"province {province} has no orgUnit in the mapping"
                else:
                    reason = f"{'|'.join(vm.disaggregation)} = {combo_key} has no categoryOptionCombo for {vm.data_element}"
                unmapped.append({"figure": vm.figure, "measure": vm.measure, "dataElement": vm.data_element,
                                 "province": province, **{d: row.get(d) for d in vm.disaggregation},
                                 "value": dhis2_value(value), "reason": reason})
                continue
            item = {"dataElement": vm.data_element, "period": period.code, "orgUnit": org_unit,
                    "categoryOptionCombo": coc, "value": dhis2_value(value)}
            if mapping.attribute_option_combo:
                item["attributeOptionCombo"] = mapping.attribute_option_combo
            data_values.append(item)
    return {
        "dataSet": mapping.data_set,
        "period": period.code,
        "dataValues": data_values,
        "unmapped": unmapped,
        "summary": {"dataValues": len(data_values), "suppressed": suppressed, "unmapped": len(unmapped)},
    }
