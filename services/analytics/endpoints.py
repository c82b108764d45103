"""HTTP surface of analytics: the figures endpoints, their query parameters documented from the reports."""
from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel
from starlette.responses import Response

from services.analytics import figures, formats, queries
from services.analytics.queries import REPORTS, Report
from services.analytics.store import StoreDep
from shared.caller import Caller, require_scope
from shared.errors import PROBLEM_RESPONSES

router = APIRouter(prefix="/analytics", tags=["analytics"], responses=PROBLEM_RESPONSES)


class Answer(BaseModel):
    """Figures: one row per group, each with its dimension values, its measures (all null when the
    row is suppressed) and `suppressed`."""

    as_of: AwareDatetime | None
    group_by: list[str]
    rows: list[dict[str, Any]]


SUMMARIES = {
    "overview": "Volunteers, verified hours, activities, people and children reached (one row unless grouped)",
    "hours": "Hours, activities and volunteers, placed where the activities happened",
    "volunteers": "Distinct active volunteers, placed where they live",
    "beneficiaries": "People reached by sex, and children, with activities and volunteers",
    "skills": "Skills change of volunteers with a baseline and an endline of an instrument",
}
_CLOSED = {"sex": queries.SEXES, "age_band": queries.AGE_BANDS, "hours_band": queries.HOURS_BANDS}
_FORMS = {"province": "2-digit gazetteer code", "district": "4-digit gazetteer code", "program": "programme code",
          "project": "project id", "organization": "organisation id", "day": "YYYY-MM-DD or today", "week": "ISO week, YYYY-Www",
          "month": "YYYY-MM", "quarter": "YYYY-Qn", "year": "YYYY"}


def _list_parameter(name: str, description: str, items: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "style": "form",
            "explode": True, "schema": {"type": "array", "items": items}}


def _parameters(report: Report) -> list[dict]:
    """The report's query parameters for the OpenAPI document (the code reads them from the query
    string itself, so that an unknown one is a 422 listing the allowed names)."""
    params = [_list_parameter("group_by", "dimensions, comma-separated or repeated",
                              {"type": "string", "enum": list(report.dimensions)})]
    params += [{"name": name, "in": "query", "required": False, "description": f"{name} date (YYYY-MM-DD, or today in Asia/Phnom_Penh), inclusive",
                "schema": {"type": "string", "format": "date"}} for name in ("from", "to")]
    if report.name == "skills":
        params.append({"name": "instrument", "in": "query", "required": True, "description": "instrument code",
                       "schema": {"type": "string", "example": "soft-skills-v1"}})
    else:
        params.append({"name": "status", "in": "query", "required": False,
                       "description": "verified: approved hours of verified entries; all: submitted entries too, at their claimed hours",
                       "schema": {"type": "string", "enum": list(queries.COUNTED_STATUSES), "default": "verified"}})
    for dim in report.dimensions:
        items = {"type": "string", "enum": list(_CLOSED[dim])} if dim in _CLOSED else {"type": "string"}
        params.append(_list_parameter(dim, f"only these {dim} values ({_FORMS.get(dim, 'code')}), comma-separated or repeated", items))
    return params


Hxl = Annotated[bool, Query(description="CSV with a row of HXL hashtags under the header (formats.py lists them)")]
_RESPONSES = {200: {"model": Answer, "content": {formats.CSV_MEDIA_TYPE: {"schema": {"type": "string"}}},
                    "description": "JSON, or CSV with `Accept: text/csv` or `?hxl=true`"}}


def _with_as_of(response: Response, as_of: datetime | None) -> Response:
    """`as_of` also as `Last-Modified` (an HTTP date, to the second), so that a CSV answer, which has no
    place for it that tools would read, still says how fresh it is."""
    if as_of is not None:
        response.headers["Last-Modified"] = format_datetime(as_of.astimezone(timezone.utc), usegmt=True)
    return response


def _add_figures_route(report: Report) -> None:
    async def figures_endpoint(request: Request, store: StoreDep, caller: Caller, hxl: Hxl = False) -> Response:
        question = figures.parse_question(report, request.query_params.multi_items(), caller)
        answer = await figures.answer(store, question, caller, request.app.state.settings.suppression_k)
        response = formats.render(report.name, answer, list(report.measures), accept=request.headers.get("accept"), hxl=hxl)
        return _with_as_of(response, answer["as_of"])

    router.add_api_route(
        f"/{report.name}", figures_endpoint, methods=["GET"], name=f"analytics_{report.name}",
        summary=SUMMARIES[report.name], response_model=None, responses=_RESPONSES,
        dependencies=[require_scope("analytics:read")], openapi_extra={"parameters": _parameters(report)},
    )


for _report in REPORTS.values():
    _add_figures_route(_report)
