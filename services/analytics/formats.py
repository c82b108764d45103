"""The wire formats of an analytics answer: JSON, CSV (`Accept: text/csv`), and CSV with a row of HXL
hashtags under the header (`?hxl=true`) for humanitarian tools.

CSV: one line per row, columns the dimensions in `group_by` order, then the report's measures, then
`suppressed` (`true`/`false`); a suppressed measure is an empty field, a dimension value that is not
known (a district of an activity recorded at province level) too. `/analytics/skills` flattens its
per-item means into `<item>_baseline_mean`, `<item>_endline_mean`, `<item>_mean_change` columns, items in
code order. `as_of` is in the JSON answer, and in every answer's `Last-Modified` header (CSV has no place for it
that tools would read).

HXL 1.1 hashtags (https://hxlstandard.org/standard/1-1final/dictionary/):

| column | hashtag | why |
|---|---|---|
| province | `#adm1+code` | a level-1 administrative unit, by gazetteer code |
| province (volunteers, skills) | `#adm1+code+residence` | volunteers are placed where they live |
| district | `#adm2+code` | level-2 unit by code |
| program | `#activity+programme+code` | the programme an activity ran under |
| project | `#activity+project+id` | the project, by id |
| organization | `#org+id` | the organisation running the project |
| activity_type | `#activity+type+code` | |
| focus_area | `#sector+code` | the programme's focus areas play the role of sectors |
| sex | `#group+sex` | a disaggregation group (HXL has no #sex) |
| age_band | `#group+age` | likewise |
| hours_band | `#group+hours` | volunteers grouped by their verified hours |
| day, week, month, quarter, year | `#date`, `#date+week`, `#date+month`, `#date+quarter`, `#date+year` | |
| volunteers, hours, activities | `#indicator+volunteers`, `#indicator+hours`, `#indicator+activities` | |
| beneficiaries(_female, _male, _other, _children) | `#reached`, `#reached+f`, `#reached+m`, `#reached+other`, `#reached+children` | people reached |
| baseline_mean, endline_mean, mean_change | `#indicator+score+baseline+mean`, `…+endline+mean`, `…+change+mean` | of the total |
| `<item>_…` | the same, with `+<item>` | per item |
| suppressed | `#meta+suppressed` | |
"""
from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from starlette.responses import Response

CSV_MEDIA_TYPE = "text/csv"
JSON_MEDIA_TYPE = "application/json"

HXL_DIMENSIONS = {
    "province": "#adm1+code",
    "district": "#adm2+code",
    "program": "#activity+programme+code",
    "project": "#activity+project+id",
    "organization": "#org+id",
    "activity_type": "#activity+type+code",
    "focus_area": "#sector+code",
    "sex": "#group+sex",
    "age_band": "#group+age",
    "hours_band": "#group+hours",
    "day": "#date",
    "week": "#date+week",
    "month": "#date+month",
    "quarter": "#date+quarter",
    "year": "#date+year",
}
# Reports that place volunteers where they live, so their province is a residence.
RESIDENCE_REPORTS = ("volunteers", "skills")
HXL_MEASURES = {
    "volunteers": "#indicator+volunteers",
    "hours": "#indicator+hours",
    "activities": "#indicator+activities",
    "beneficiaries": "#reached",
    "beneficiaries_female": "#reached+f",
    "beneficiaries_male": "#reached+m",
    "beneficiaries_other": "#reached+other",
    "beneficiaries_children": "#reached+children",
    "baseline_mean": "#indicator+score+baseline+mean",
    "endline_mean": "#indicator+score+endline+mean",
    "mean_change": "#indicator+score+change+mean",
    "suppressed": "#meta+suppressed",
}
ITEM_MEASURES = ("baseline_mean", "endline_mean", "mean_change")


def wants_csv(accept: str | None) -> bool:
    """CSV when `Accept` prefers text/csv to JSON (q-values honoured; named CSV beats a wildcard)."""
    weights: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        media = media.lower()
        weights[media] = max(weights.get(media, 0.0), weight)
    csv_weight = weights.get(CSV_MEDIA_TYPE, weights.get("text/*", 0.0))
    if csv_weight <= 0:
        return False
    if JSON_MEDIA_TYPE in weights:  # both named: JSON, the default, wins a tie
        return csv_weight > weights[JSON_MEDIA_TYPE]
    return csv_weight >= max(weights.get("application/*", 0.0), weights.get("*/*", 0.0))


def columns(answer: dict[str, Any], measures: list[str]) -> list[str]:
    """The CSV header: dimensions, measures (items flattened), suppressed."""
    names = list(answer["group_by"])
    for measure in measures:
        if measure == "items":
            codes = sorted({code for row in answer["rows"] for code in (row.get("items") or {})})
            names += [f"{code}_{m}" for code in codes for m in ITEM_MEASURES]
        else:
            names.append(measure)
    return [*names, "suppressed"]


def hxl_row(report: str, names: list[str], group_by: list[str], measures: list[str]) -> list[str]:
    tags = []
    for name in names:
        if name in group_by:
            tag = HXL_DIMENSIONS[name]
            if name == "province" and report in RESIDENCE_REPORTS:
                tag += "+residence"
        elif name in HXL_MEASURES:
            tag = HXL_MEASURES[name]
        else:  # <item>_<measure> of the skills report
            measure = next(m for m in ITEM_MEASURES if name.endswith("_" + m))
            tag = f"{HXL_MEASURES[measure]}+{name.removesuffix('_' + measure)}"
        tags.append(tag)
    return tags


def _field(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def to_csv(report: str, answer: dict[str, Any], measures: list[str], hxl: bool) -> str:
    names = columns(answer, measures)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(names)
    if hxl:
        writer.writerow(hxl_row(report, names, answer["group_by"], measures))
    for row in answer["rows"]:
        flat = dict(row)
        for code, means in (row.get("items") or {}).items():
            flat.update({f"{code}_{m}": value for m, value in means.items()})
        writer.writerow([_field(flat.get(name)) for name in names])
    return out.getvalue()


def render(report: str, answer: dict[str, Any], measures: list[str], *, accept: str | None, hxl: bool) -> Response:
    """The answer in the format asked for. `hxl=true` implies CSV: HXL tools fetch a URL as it is,
    without choosing a media type."""
    if hxl or wants_csv(accept):
        return Response(to_csv(report, answer, measures, hxl), media_type=CSV_MEDIA_TYPE,
                        headers={"Content-Disposition": f'inline; filename="vmc-{report}.csv"'})
    return Response(orjson.dumps(answer, option=orjson.OPT_UTC_Z), media_type=JSON_MEDIA_TYPE)
