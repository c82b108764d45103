"""Rules of an analytics answer: the question checked from the query string, run on the read store in a
worker thread, and its small cells suppressed unless the caller may see them."""
from __future__ import annotations

import calendar
import re
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from services.analytics import queries
from services.analytics.queries import PERIODS, REFERENCES, Question, Report
from services.analytics.store import AnalyticsStore
from services.analytics.suppression import suppress
from shared.caller import CallerContext
from shared.errors import ProblemError

SINGLE = ("from", "to", "status", "instrument")
FORMAT_PARAMETERS = ("hxl",)  # read by the endpoint, not part of the question
MAX_TEXT = 100
# Activity dates are local dates; "today" is Phnom Penh's (UTC+7 all year: Cambodia keeps no summer time).
PHNOM_PENH = timezone(timedelta(hours=7), "Asia/Phnom_Penh")
TODAY = "today"


def local_today() -> date:
    return datetime.now(PHNOM_PENH).date()


def _error(name: str, msg: str, allowed: Sequence[str] | None = None) -> dict:
    error: dict[str, Any] = {"loc": ["query", name], "msg": msg}
    if allowed is not None:
        error["allowed"] = list(allowed)
        error["msg"] += f"; allowed: {', '.join(allowed)}"
    return error


# ---- values --------------------------------------------------------------------------------------
_PERIOD_PATTERNS = {
    "day": (re.compile(r"(\d{4})-(\d{2})-(\d{2})"), "YYYY-MM-DD, e.g. 2026-03-05, or today"),
    "week": (re.compile(r"(\d{4})-W(\d{2})"), "an ISO week YYYY-Www, e.g. 2026-W09"),
    "month": (re.compile(r"(\d{4})-(\d{2})"), "YYYY-MM, e.g. 2026-03"),
    "quarter": (re.compile(r"(\d{4})-Q([1-4])"), "YYYY-Qn, e.g. 2026-Q1"),
    "year": (re.compile(r"(\d{4})"), "YYYY, e.g. 2026"),
}


def period_range(period: str, value: str) -> tuple[date, date]:
    """The first and the last day of a period value (`2026-W09` → Monday 23 Feb to Sunday 1 Mar 2026).
    Raises ValueError naming the expected form."""
    if period == "day" and value == TODAY:
        return local_today(), local_today()
    pattern, form = _PERIOD_PATTERNS[period]
    match = pattern.fullmatch(value)
    try:
        if match is None:
            raise ValueError
        year, *rest = (int(part) for part in match.groups())
        if period == "day":
            first = last = date(year, *rest)
        elif period == "week":
            first = date.fromisocalendar(year, rest[0], 1)
            last = first + timedelta(days=6)
        elif period == "month":
            first = date(year, rest[0], 1)
            last = first.replace(day=calendar.monthrange(year, rest[0])[1])
        elif period == "quarter":
            first = date(year, 3 * rest[0] - 2, 1)
            last = date(year, 3 * rest[0], calendar.monthrange(year, 3 * rest[0])[1])
        else:
            first, last = date(year, 1, 1), date(year, 12, 31)
    except (ValueError, OverflowError):
        raise ValueError(f"{value!r} is not a {period}: expected {form}") from None
    return first, last


_CODE_PATTERNS = {"province": re.compile(r"\d{2}"), "district": re.compile(r"\d{4}")}
_CLOSED_SETS = {"sex": queries.SEXES, "age_band": queries.AGE_BANDS, "hours_band": queries.HOURS_BANDS}


def filter_value(dimension: str, value: str) -> Any:
    """One filter value in the form the SQL compares; raises ValueError saying what is expected."""
    if dimension in PERIODS:
        return period_range(dimension, value)
    if dimension in REFERENCES:
        try:
            return uuid.UUID(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an id (a UUID)") from None
    if dimension in _CODE_PATTERNS:
        if not _CODE_PATTERNS[dimension].fullmatch(value):
            digits = 2 if dimension == "province" else 4
            raise ValueError(f"{value!r} is not a {dimension} code ({digits} digits of the gazetteer)")
        return value
    if dimension in _CLOSED_SETS:
        if value not in _CLOSED_SETS[dimension]:
            raise ValueError(f"{value!r} is not a {dimension}")
        return value
    if len(value) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    return value


def _date(value: str) -> date:
    if value == TODAY:
        return local_today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD, or today)") from None


# ---- the question ----------------------------------------------------------------------------------
def parse_question(report: Report, params: Sequence[tuple[str, str]], caller: CallerContext) -> Question:
    """The question of a query string (pairs in order; a parameter may repeat), or a 422 listing every
    problem at once, each with the values allowed where they are a closed list."""
    errors: list[dict] = []
    dims = report.dimensions
    single: dict[str, str] = {}
    group_by: list[str] = []
    raw_filters: dict[str, list[str]] = {}
    accepted = ("group_by", *SINGLE[:2], *(("instrument",) if report.name == "skills" else ("status",)), *dims)
    for name, value in params:
        if name in FORMAT_PARAMETERS:
            continue
        if name not in accepted:
            errors.append(_error(name, f"unknown parameter {name!r}", accepted))
        elif name in SINGLE:
            if name in single:
                errors.append(_error(name, "given more than once"))
            single[name] = value
        else:
            # Comma-separated or repeated: both mean "any of these" (group_by: "by each of these").
            parts = [part.strip() for part in value.split(",") if part.strip()]
            (group_by if name == "group_by" else raw_filters.setdefault(name, [])).extend(parts)

    for dim in group_by:
        if dim not in dims:
            errors.append(_error("group_by", f"unknown dimension {dim!r}", dims))
    filters: dict[str, tuple] = {}
    for dim, values in raw_filters.items():
        if not values:
            errors.append(_error(dim, "empty filter: give at least one value"))
            continue
        parsed = []
        for value in values:
            try:
                parsed.append(filter_value(dim, value))
            except ValueError as exc:
                errors.append(_error(dim, str(exc), _CLOSED_SETS.get(dim)))
        filters[dim] = tuple(dict.fromkeys(parsed))

    bounds: dict[str, date] = {}
    for name in ("from", "to"):
        if name in single:
            try:
                bounds[name] = _date(single[name])
            except ValueError as exc:
                errors.append(_error(name, str(exc)))
    if "from" in bounds and "to" in bounds and bounds["from"] > bounds["to"]:
        errors.append(_error("from", f"from ({bounds['from']}) is after to ({bounds['to']})"))
    status = single.get("status", "verified")
    if status not in queries.COUNTED_STATUSES:
        errors.append(_error("status", f"unknown status {status!r}", tuple(queries.COUNTED_STATUSES)))

    if errors:
        detail = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors[:5])
        raise ProblemError(422, detail, errors=errors)
    return Question(
        report=report,
        group_by=tuple(dict.fromkeys(group_by)),
        filters=filters,
        date_from=bounds.get("from"),
        date_to=bounds.get("to"),
        status=status,
        tree_root=None if caller.national else caller.organization_id,
        instrument=single.get("instrument"),
    )


# ---- the answer ----------------------------------------------------------------------------------
async def _check_references(store: AnalyticsStore, question: Question) -> None:
    statement = queries.visible_references_sql(question)
    if statement is None:
        return
    found = set(await store.read(statement.sql, statement.params))
    for kind in REFERENCES:
        for value in question.filters.get(kind, ()):
            if (kind, value) not in found:
                # Another organisation's and a made-up id answer alike: existence does not leak.
                raise ProblemError(404, f"{kind} {value} not found")


async def _check_instrument(store: AnalyticsStore, question: Question) -> None:
    # Instruments are the activities service's catalogue; analytics knows those its events named.
    known = [row[0] for row in await store.read(queries.INSTRUMENTS_SQL)]
    if question.instrument in known:
        return
    if question.instrument is None:
        error = _error("instrument", "required", known)
    else:
        error = _error("instrument", f"no assessment of the instrument {question.instrument!r} is recorded", known)
    raise ProblemError(422, f"instrument: {error['msg']}", errors=[error])


async def _figures(store: AnalyticsStore, question: Question, totals: bool = False) -> queries.Figures:
    """The question's cells (or slice totals) from one snapshot of the store."""
    if question.report.name == "skills":
        statement = queries.skills_sql(question, totals)
        rows = await store.read(statement.sql, statement.params)
    else:
        statement, rows = await store.read_keyed(lambda keys: queries.figures_sql(question, totals, keys))
    return queries.figures_of(question, statement.columns, rows)


async def answer(store: AnalyticsStore, question: Question, caller: CallerContext, k: int) -> dict[str, Any]:
    """`{"as_of", "group_by", "rows"}`: the figures, suppressed unless the caller holds
    `analytics:unsuppressed`; the overview adds `organizations`, how many analytics knows in the
    caller's view."""
    await _check_references(store, question)
    if question.report.name == "skills":
        await _check_instrument(store, question)
    figures = await _figures(store, question)
    measures = list(question.report.measures)
    if caller.has("analytics:unsuppressed"):
        rows = [{**row, "suppressed": False} for row in figures.rows]
    else:
        # Slice totals cost a scan per dimension, and only matter once a cell is hidden. They come from a
        # second snapshot: no weaker than the totals a reader asks for later (the README says what
        # suppression does not protect against, differencing answers over time among it).
        if question.group_by and any(row["volunteers"] < k for row in figures.rows):
            figures.slice_totals = (await _figures(store, question, totals=True)).slice_totals
        rows = suppress(figures.rows, list(question.group_by), k, measures, volunteers_key="volunteers",
                        slice_totals=figures.slice_totals, tie_key="hours" if "hours" in measures else None)
    as_of = figures.as_of.astimezone(timezone.utc) if figures.as_of else None
    result = {"as_of": as_of, "group_by": list(question.group_by), "rows": rows}
    if question.report.name == "overview":
        # Organisations, not people: nothing to suppress. It shows registry events arriving before any
        # activity does (operators and the cross-service tests watch it).
        statement = queries.organizations_sql(question)
        result["organizations"] = (await store.read(statement.sql, statement.params))[0][0]
    return result
