"""HTTP surface of the DHIS2 export: `/analytics/export/dhis2?period=` (audited by the gateway as `export.dhis2`)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from services.analytics.dhis2 import (
    EXAMPLE_MAPPING,
    PERIOD_FORMS,
    Dhis2Mapping,
    MappingError,
    Period,
    data_value_set,
    load_mapping,
    parse_period,
)
from services.analytics.figures import answer
from services.analytics.queries import REPORTS, Question
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import AnalyticsStore, StoreDep
from shared.caller import Caller, CallerContext, require_scope
from shared.errors import PROBLEM_RESPONSES, ProblemError

router = APIRouter(prefix="/analytics/export", tags=["analytics"], responses=PROBLEM_RESPONSES)


# The wire shape, for the OpenAPI document; names are DHIS2's (camelCase) so the payload posts as it is.
class DataValue(BaseModel):
    dataElement: str
    period: str
    orgUnit: str
    categoryOptionCombo: str
    attributeOptionCombo: str | None = Field(None, description="present when the mapping names one")
    value: str


class ExportSummary(BaseModel):
    dataValues: int
    suppressed: int = Field(description="values left out because their cell is suppressed")
    unmapped: int


class Dhis2Export(BaseModel):
    dataSet: str
    period: str = Field(description="as DHIS2 writes it (2026W9, not 2026W09)")
    dataValues: list[DataValue]
    unmapped: list[dict[str, Any]] = Field(description="cells the mapping cannot place: figure, measure, "
                                           "dataElement, province, the disaggregation's values, value, reason")
    summary: ExportSummary
    as_of: datetime | None = Field(description="every event up to this time is in the figures")


def mapping_of(settings: AnalyticsSettings) -> Dhis2Mapping:
    """The configured mapping, checked against the figures analytics offers. Read on each export (a rare,
    audited call), so an edited file counts without a restart."""
    try:
        return load_mapping(settings.dhis2_mapping or EXAMPLE_MAPPING,
                            figures={name: report.measures for name, report in REPORTS.items()},
                            dimensions=REPORTS["hours"].dimensions)
    except MappingError as exc:
        # The operator's file, not the caller's request: a server-side problem, said plainly.
        raise ProblemError(500, f"the DHIS2 mapping is unusable: {exc}", slug="dhis2-mapping") from None


async def export_payload(store: AnalyticsStore, caller: CallerContext, mapping: Dhis2Mapping, period: Period,
                         k: int) -> dict[str, Any]:
    """The payload for `period`: each answer the mapping needs, as the caller would get it from
    `/analytics/<figure>?group_by=province,...&from=&to=` (verified figures, their visibility, suppressed
    unless they hold `analytics:unsuppressed`), then mapped."""
    figures: dict[tuple[str, tuple[str, ...]], list[dict]] = {}
    as_ofs: list[datetime] = []
    for figure, group_by in mapping.queries():
        question = Question(report=REPORTS[figure], group_by=group_by, date_from=period.start, date_to=period.end,
                            tree_root=None if caller.national else caller.organization_id)
        result = await answer(store, question, caller, k)
        figures[figure, group_by] = result["rows"]
        if result["as_of"] is not None:
            as_ofs.append(result["as_of"])
    # Each answer is one snapshot; the payload holds at least every event up to the oldest of them.
    return {**data_value_set(mapping, period, figures), "as_of": min(as_ofs, default=None)}


def _refuse_what_would_be_ignored(params: list[tuple[str, str]]) -> None:
    """`period` is the export's only parameter: another one (a filter, a format) or a second period would be
    ignored, and the caller would send figures other than those they believe, so each is a 422."""
    errors = [{"loc": ["query", name], "msg": f"unknown parameter {name!r}; allowed: period", "allowed": ["period"]}
              for name in dict.fromkeys(name for name, _ in params) if name != "period"]
    if sum(name == "period" for name, _ in params) > 1:
        errors.append({"loc": ["query", "period"], "msg": "given more than once"})
    if errors:
        raise ProblemError(422, "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors), errors=errors)


@router.get("/dhis2", dependencies=[require_scope("analytics:read")], response_model=Dhis2Export,
            response_model_exclude_unset=True)
async def dhis2_export(
    request: Request,
    store: StoreDep,
    caller: Caller,
    period: Annotated[str, Query(description=f"A DHIS2 period: {', '.join(PERIOD_FORMS)}", max_length=20)],
) -> dict[str, Any]:
    """A DHIS2 `dataValueSets` payload of the period's figures, mapped by the configured mapping file;
    suppressed cells left out, cells the mapping cannot place listed under `unmapped`."""
    _refuse_what_would_be_ignored(request.query_params.multi_items())
    try:
        parsed = parse_period(period)
    except ValueError as exc:
        raise ProblemError(422, str(exc), errors=[
            {"loc": ["query", "period"], "msg": str(exc), "allowed": list(PERIOD_FORMS)}]) from None
    settings: AnalyticsSettings = request.app.state.settings
    return await export_payload(store, caller, mapping_of(settings), parsed, settings.suppression_k)
