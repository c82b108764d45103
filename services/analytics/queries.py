"""The SQL of the analytics figures: a checked question (dimensions, filters, visibility) turned into one
DuckDB statement on the read store, and its result rows turned back into cells.

An answer's cells and `as_of` come from one statement, so from one snapshot of the store. The slice
totals complementary suppression needs (the same query one dimension fewer, for each dimension) are a
second statement, run only when a cell is hidden: one scan computing every total with `GROUPING SETS`.

Placement (product §4): hours, activities and beneficiaries are placed where the activity happened
(`province`/`district` of its location code); `/analytics/volunteers` places volunteers by residence
(`province` and `district` are those of their residence there: the district is the first four digits of
the residence commune, None when the volunteer gave a province only). Sex and age band of a volunteer the store has not heard of yet are "unknown"; so
is an age under 10 (no volunteer can be that young: a wrong date of birth). A missing district (an
activity recorded at province level) or residence is `None`.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from services.analytics.store import CELLS, SKILL_LINKS, TOTALS, Totals

AGE_BANDS = ("10-14", "15-17", "18-24", "25-30", "31+", "unknown")
SEXES = ("female", "male", "other", "undisclosed", "unknown")
HOURS_BANDS = ("0-19", "20-49", "50+")
PERIODS = ("day", "week", "month", "quarter", "year")
# Dimensions whose values are ids of the store's organisations and projects (a filter naming one the
# caller may not see is a 404, as everywhere in the API).
REFERENCES = {"organization": "organization", "project": "project"}


# ---- dimension expressions --------------------------------------------------------------------------
def age_sql(on: str, born: str) -> str:
    """Completed years on `on` (born on 29 February: a year older on 1 March), as the registry counts."""
    return (f"(year({on}) - year({born}) - CASE WHEN month({on}) * 100 + day({on}) "
            f"< month({born}) * 100 + day({born}) THEN 1 ELSE 0 END)")


def age_band_sql(age: str) -> str:
    return (f"CASE WHEN {age} IS NULL OR {age} < 10 THEN 'unknown' WHEN {age} <= 14 THEN '10-14' "
            f"WHEN {age} <= 17 THEN '15-17' WHEN {age} <= 24 THEN '18-24' WHEN {age} <= 30 THEN '25-30' "
            "ELSE '31+' END")


# Each dimension is grouped by a KEY expression (cheap to hash: a date truncated to its period, a UUID)
# and shown by a LABEL of that key, formatted once per group after aggregation (formatting every
# row's date as text before grouping cost about as much as the rest of the query). A filter compares
# the key. Over the `activity` table `f`, whose rows carry their volunteer's attributes and age band on
# the activity date (denormalised at write time: store.py), so no dimension needs a join. Dates
# are already local (Asia/Phnom_Penh); `date_trunc('week')` is the ISO week's Monday.
ACTIVITY_EXPRESSIONS = {
    "province": "f.province",
    "district": "f.district",
    "program": "f.program",
    "project": "f.project_id",
    "organization": "f.organization_id",
    "activity_type": "f.activity_type",
    "focus_area": "f.focus_area",
    "sex": "coalesce(f.sex, 'unknown')",
    "age_band": "f.age_band",
    "day": "f.date",
    "week": "date_trunc('week', f.date)",
    "month": "f.month",
    "quarter": "date_trunc('quarter', f.month)",
    "year": "year(f.month)",
}
LABELS = {
    "project": "CAST({0} AS VARCHAR)",
    "organization": "CAST({0} AS VARCHAR)",
    "day": "strftime({0}, '%Y-%m-%d')",
    "week": "strftime({0}, '%G-W%V')",
    "month": "strftime({0}, '%Y-%m')",
    "quarter": "concat(year({0}), '-Q', quarter({0}))",
    "year": "CAST({0} AS VARCHAR)",
}
# `/analytics/volunteers` counts volunteers where they live.
RESIDENCE_EXPRESSIONS = {**ACTIVITY_EXPRESSIONS, "province": "f.residence_province", "district": "f.residence_district"}

# Over `people p` (one row per volunteer with a baseline and an endline, `p._age` at the endline).
SKILLS_PERSON_EXPRESSIONS = {
    "hours_band": "CASE WHEN p.hours < 20 THEN '0-19' WHEN p.hours < 50 THEN '20-49' ELSE '50+' END",
    "province": "p.residence_province",
    "organization": "p.organization_id",
    "sex": "coalesce(p.sex, 'unknown')",
    "age_band": age_band_sql("p._age"),
}
# Dimensions a volunteer has through their verified activities (a volunteer of two programmes is in both).
SKILLS_ACTIVITY_DIMENSIONS = ("program", "project", "activity_type", "focus_area")

# The hours an activity counts for: approved hours once verified; claimed hours while submitted
# (counted only under status=all). Rejected and voided entries never pass the status condition.
_HOURS = "CASE WHEN f.status = 'verified' THEN f.approved_hours ELSE f.hours END"
COUNTED_STATUSES = {"verified": ("verified",), "all": ("verified", "submitted")}

MEASURE_SQL = {
    "volunteers": "count(DISTINCT _volunteer)",
    "hours": "round(coalesce(sum(_hours), 0), 2)",
    "activities": "count(*)",
    "beneficiaries": "coalesce(sum(ben_female + ben_male + ben_other), 0)",
    "beneficiaries_female": "coalesce(sum(ben_female), 0)",
    "beneficiaries_male": "coalesce(sum(ben_male), 0)",
    "beneficiaries_other": "coalesce(sum(ben_other), 0)",
    "beneficiaries_children": "coalesce(sum(ben_children), 0)",
}


@dataclass(frozen=True)
class Report:
    """One figures endpoint: what it can be cut by and what each cell holds."""

    name: str
    expressions: dict[str, str]
    measures: tuple[str, ...]

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(self.expressions)


REPORTS = {
    report.name: report
    for report in (
        Report("overview", ACTIVITY_EXPRESSIONS,
               ("volunteers", "hours", "activities", "beneficiaries", "beneficiaries_children")),
        Report("hours", ACTIVITY_EXPRESSIONS, ("hours", "activities", "volunteers")),
        Report("volunteers", RESIDENCE_EXPRESSIONS, ("volunteers",)),
        Report("beneficiaries", ACTIVITY_EXPRESSIONS,
               ("beneficiaries_female", "beneficiaries_male", "beneficiaries_other", "beneficiaries_children",
                "beneficiaries", "activities", "volunteers")),
        Report("skills", {**SKILLS_PERSON_EXPRESSIONS, **{d: ACTIVITY_EXPRESSIONS[d] for d in SKILLS_ACTIVITY_DIMENSIONS}},
               ("volunteers", "baseline_mean", "endline_mean", "mean_change", "items")),
    )
}


@dataclass(frozen=True)
class Question:
    """A checked request for figures. `filters` map a dimension to the values it may take (any of them);
    periods are `(first, last)` days, both included; `organization`/`project` are UUIDs.
    `tree_root` is the caller's organisation when it sees its tree only, None for a national key."""

    report: Report
    group_by: tuple[str, ...] = ()
    filters: dict[str, tuple] = field(default_factory=dict)
    date_from: date | None = None
    date_to: date | None = None
    status: str = "verified"
    tree_root: uuid.UUID | None = None
    instrument: str | None = None


@dataclass(frozen=True)
class Statement:
    """SQL with its positional parameters and the names of the columns it returns."""

    sql: str
    params: list[Any]
    columns: tuple[str, ...]


@dataclass
class Figures:
    """An answer before suppression: its cells, and per dimension the slice totals (distinct volunteers
    of the answer one dimension fewer, keyed by the other dimensions' values in `group_by` order)."""

    as_of: datetime | None
    rows: list[dict[str, Any]]
    slice_totals: dict[str, dict[tuple, int]]


# ---- building -----------------------------------------------------------------------------------------
class _Params:
    """Positional `?` parameters collected while the SQL is written, in order."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return "?"

    def many(self, values: Sequence[Any]) -> str:
        return ", ".join(self(v) for v in values)


def _tree_cte(question: Question, p: _Params) -> str:
    # UNION (not UNION ALL) ends the recursion even if a cycle ever crept into the parent links.
    return (f"tree(id) AS (SELECT CAST({p(question.tree_root)} AS UUID) UNION "
            "SELECT o.id FROM organization o JOIN tree t ON o.parent_id = t.id)")


def _with(ctes: list[str]) -> str:
    return f"WITH RECURSIVE {', '.join(ctes)} " if ctes else ""


def _period_condition(column: str, ranges: Sequence[tuple[date, date]], p: _Params) -> str:
    return "(" + " OR ".join(f"({column} BETWEEN {p(first)} AND {p(last)})" for first, last in ranges) + ")"


def _activity_conditions(question: Question, expressions: dict[str, str], statuses: Sequence[str],
                         p: _Params, dimensions: Sequence[str] | None = None, dates: str = "f.date") -> list[str]:
    """WHERE conditions on `activity f` (or a rollup, whose `dates` are its `f.month`: the router sends it
    only whole months): counted statuses, dates, the caller's tree, and the filters on `dimensions`
    (all of the question's filters by default)."""
    conditions = [f"f.status IN ({p.many(statuses)})"]
    if question.date_from:
        conditions.append(f"{dates} >= {p(question.date_from)}")
    if question.date_to:
        conditions.append(f"{dates} <= {p(question.date_to)}")
    if question.tree_root is not None:
        conditions.append("f.organization_id IN (SELECT id FROM tree)")
    for name, values in question.filters.items():
        if dimensions is not None and name not in dimensions:
            continue
        if name in PERIODS:
            conditions.append(_period_condition(dates, values, p))
        else:
            conditions.append(f"{expressions[name]} IN ({p.many(values)})")
    return conditions


def _grouping(dims: Sequence[str], totals: bool) -> tuple[str, str]:
    """The GROUP BY clause and the `_set` column: 0 for the answer's cells; for slice totals (the
    answer one dimension fewer, each dimension left out in turn) GROUPING()'s bit of the dimension left out."""
    if not totals:
        return (f"GROUP BY {', '.join(dims)}" if dims else "GROUP BY ()"), "0"
    sets = [[d for d in dims if d != left_out] for left_out in dims]
    # With one dimension the only total is the grand total, `()`; a column must be in some grouping
    # set to be selected, so its own set is added and dropped again.
    having = f" HAVING GROUPING({dims[0]}) = 1" if len(dims) == 1 else ""
    if len(dims) == 1:
        sets.append(list(dims))
    rendered = ", ".join("(" + ", ".join(s) + ")" for s in sets)
    return f"GROUP BY GROUPING SETS ({rendered}){having}", f"GROUPING({', '.join(dims)})"


def _statement(ctes: list[str], grouped: str, dims: Sequence[str], columns: Sequence[str], p: _Params,
               state: str = "derived") -> Statement:
    """`grouped` (columns `_set`, the dimensions' keys, `columns`) beside `as_of`, keys labelled: a LEFT
    JOIN, so that an answer with no cell still says how fresh the store is (one row, `_set` NULL). `state`:
    'events' for an answer read from the activity rows alone, 'derived' for one reading a derived table
    (summary, cells, totals, skill pairs), which the upkeep brings up to the rows a little later."""
    labels = "".join(f", {LABELS.get(d, '{0}').format('g.' + d)} AS {d}" for d in dims)
    order = "ORDER BY g._set" + "".join(f", g.{d} NULLS LAST" for d in dims)
    sql = (f"{_with(ctes)}SELECT s.as_of, g._set{labels}{''.join(', g.' + c for c in columns)} "
           f"FROM (SELECT max(as_of) AS as_of FROM store_state WHERE name = '{state}') s "
           f"LEFT JOIN ({grouped}) g ON true {order}")
    return Statement(sql, p.values, ("as_of", "_set", *dims, *columns))


# Distinct volunteers per group, exactly, two ways. `count(DISTINCT)` hashes every (group, volunteer)
# pair: with 20 k volunteers spread over types and quarters that is 677 k entries for 169 groups. A
# bitmap per group (`bitstring_agg` over the survivors' integer keys, one bit per key) costs a bit set
# per row and a popcount per group: a third to a half of the CPU at 1 M activities, as long as the
# bitmaps are few and small. Used when the groups (estimated from each dimension's usual number of
# values) times the bitmap's bytes stay within BITMAP_BUDGET.
BITMAP_BUDGET = 64 * 1024 * 1024
DIMENSION_VALUES = {
    "province": 25, "district": 200, "program": 20, "project": 1000, "organization": 200, "activity_type": 12,
    "focus_area": 8, "sex": 5, "age_band": 6, "day": 1100, "week": 160, "month": 36, "quarter": 12, "year": 3,
}


def _volunteers_sql(dims: Sequence[str], volunteer_keys: int | None) -> str:
    """The distinct-volunteers measure over `_volunteer` (keys 1..`volunteer_keys`, as read in the
    statement's snapshot, or None if unknown)."""
    groups = 1
    for d in dims:
        groups *= DIMENSION_VALUES[d]
    if volunteer_keys and groups * (volunteer_keys / 8) <= BITMAP_BUDGET:
        # No row in the group (an answer with no dimension over no activity): 0, as count(DISTINCT) gives.
        return f"coalesce(bit_count(bitstring_agg(_volunteer, 1, {int(volunteer_keys)})), 0)"
    return MEASURE_SQL["volunteers"]


# ---- design 3: rollups shaped to the dashboards (store.py CELLS) --------------------------------------
# A cell holds, per chunk of volunteer keys, the sums of its activities and a bitmap of its volunteers
# (`volunteers`), so a group's measures are read in two steps: per chunk (`CELLS_CHUNK_SQL`: sums of sums,
# the popcount of the cells' bitmaps OR-ed), then over the chunks (`CELLS_MEASURE_SQL`: sums; a volunteer
# is in one chunk only, so the distinct volunteers add up).
CELLS_CHUNK_SQL = {
    "volunteers": "bit_count(bit_or(_bits))", "hours": "sum(_hours)", "activities": "sum(_activities)",
    "beneficiaries": "sum(ben_female + ben_male + ben_other)", "beneficiaries_female": "sum(ben_female)",
    "beneficiaries_male": "sum(ben_male)", "beneficiaries_other": "sum(ben_other)",
    "beneficiaries_children": "sum(ben_children)",
}
CELLS_MEASURE_SQL = {m: (f"round(coalesce(sum(_c_{m}), 0), 2)" if m == "hours" else f"coalesce(sum(_c_{m}), 0)")
                     for m in CELLS_CHUNK_SQL}
ROLLUP_TABLES = tuple(CELLS)


@dataclass(frozen=True)
class Rollup:
    name: str
    columns: frozenset[str]


ROUTES = [Rollup(name, frozenset(cells.key)) for name, cells in CELLS.items()]


def _columns(expression: str) -> set[str]:
    """The columns of `activity f` an expression reads."""
    return set(re.findall(r"\bf\.(\w+)", expression))


def _whole_months(first: date, last: date) -> bool:
    return first.day == 1 and (last + timedelta(days=1)).day == 1


def rollup_for(question: Question) -> Rollup | None:
    """The first table of cells that answers `question` exactly, or None (the activity rows then): every
    dimension grouped or filtered is one of its columns, dates (from/to, period filters) are whole
    months of a monthly table, and it has the organisation when the caller sees a tree only. Skills has
    its own tables."""
    if question.report.name == "skills":
        return None
    expressions = question.report.expressions
    needed: set[str] = set()
    for name in question.group_by:
        needed |= _columns(expressions[name])
    for name, values in question.filters.items():
        if name in PERIODS:
            if not all(_whole_months(first, last) for first, last in values):
                return None
            needed.add("month")
        else:
            needed |= _columns(expressions[name])
    if question.date_from is not None or question.date_to is not None:
        if question.date_from is not None and question.date_from.day != 1:
            return None
        if question.date_to is not None and (question.date_to + timedelta(days=1)).day != 1:
            return None
        needed.add("month")
    if question.tree_root is not None:
        needed.add("organization_id")
    return next((route for route in ROUTES if needed <= route.columns), None)


def totals_expressions(totals: Totals) -> dict[str, str]:
    """The expressions of a table of totals' dimensions, over its table of cells `f`."""
    expressions = RESIDENCE_EXPRESSIONS if totals.residence else ACTIVITY_EXPRESSIONS
    return {d: expressions[d] for d in totals.dimensions}


def totals_for(question: Question) -> str | None:
    """The first table of totals (store.py TOTALS) whose rows are `question`'s cells (a row per group and chunk), or None:
    a question the cells answer (`rollup_for`: whole months), of one status, seen nationally, whose every
    grouped dimension is one of the table's and computed the same way, every other dimension of the table
    fixed to one value by a filter, and no other filter (dates and periods only on a table with months)."""
    if question.report.name == "skills" or len(COUNTED_STATUSES[question.status]) != 1 or question.tree_root is not None:
        return None
    if rollup_for(question) is None:
        return None
    dated = question.date_from is not None or question.date_to is not None or any(d in question.filters for d in PERIODS)
    for name, table in TOTALS.items():
        expressions = totals_expressions(table)
        if any(question.report.expressions[d] != expressions.get(d) for d in question.group_by):
            continue
        if any(d not in question.group_by and len(question.filters.get(d, ())) != 1 for d in table.dimensions):
            continue
        if any(d not in table.dimensions and d not in PERIODS for d in question.filters):
            continue
        if any(question.report.expressions[d] != expressions[d] for d in question.filters if d in expressions):
            continue
        if dated and "month" not in table.dimensions:
            continue
        return name
    return None


# A measure of one group and chunk from its row of totals `f` (summed over the group's chunks as the cells'
# measures are: a volunteer is in one chunk only).
TOTALS_COLUMN_SQL = {"volunteers": "f.volunteers", "hours": _HOURS, "activities": "f.activities",
                     "beneficiaries": "f.ben_female + f.ben_male + f.ben_other", "beneficiaries_female": "f.ben_female",
                     "beneficiaries_male": "f.ben_male", "beneficiaries_other": "f.ben_other",
                     "beneficiaries_children": "f.ben_children"}


def figures_sql(question: Question, totals: bool = False, volunteer_keys: int | None = None,
                rollups: bool = True) -> Statement:
    """The answer's cells: `as_of`, `_set` (0), the dimensions in `group_by` order, the report's
    measures. With `totals`, the slice totals instead: the distinct volunteers of each group of the
    answer one dimension fewer, every dimension left out in turn, in one scan (`GROUPING SETS`).
    Read from the first table of cells covering the question (`rollup_for`) unless `rollups` is
    False, from the activity rows otherwise: the same figures either way. A question whose groups are the
    rows of a table of totals (`totals_for`) reads those rows, its slice totals the cells."""
    report, dims, p = question.report, list(question.group_by), _Params()
    whole = totals_for(question) if rollups and not totals else None
    if whole:
        conditions = _activity_conditions(question, {d: f"f.{d}" for d in report.expressions},
                                          COUNTED_STATUSES[question.status], p, dates="f.month")
        columns = ", ".join(f"{TOTALS_COLUMN_SQL[m]} AS _c_{m}" for m in report.measures)
        measures = ", ".join(f"{CELLS_MEASURE_SQL[m]} AS {m}" for m in report.measures)
        grouped = (f"SELECT 0 AS _set, {''.join(d + ', ' for d in dims)}{measures} FROM (SELECT {''.join('f.' + d + ', ' for d in dims)}"
                   f"{columns} FROM {whole} f WHERE {' AND '.join(conditions)}) t GROUP BY {', '.join(dims) if dims else '()'}")
        return _statement([], grouped, dims, report.measures, p)
    ctes = [_tree_cte(question, p)] if question.tree_root is not None else []
    rollup = rollup_for(question) if rollups else None
    conditions = _activity_conditions(question, report.expressions, COUNTED_STATUSES[question.status], p,
                                      dates="f.month" if rollup else "f.date")
    # Only what the statement uses is projected; DuckDB reads only those columns.
    # Distinct volunteers are counted on the survivors' integer keys (cheaper to hash than UUIDs).
    if rollup:
        inner = f"SELECT f.*, {_HOURS} AS _hours FROM {rollup.name} f WHERE {' AND '.join(conditions)}"
        taken = "volunteers AS _bits, activities AS _activities, chunk AS _chunk"
    else:
        inner = (f"SELECT f.*, f.volunteer_key AS _volunteer, {_HOURS} AS _hours FROM activity f "
                 f"WHERE {' AND '.join(conditions)}")
        taken = "_volunteer"
    cells = ", ".join(f"{report.expressions[d]} AS {d}" for d in dims)
    projected = (f"SELECT {cells + ', ' if cells else ''}{taken}, _hours, ben_female, ben_male, ben_other, "
                 f"ben_children FROM ({inner}) f")
    names = ("volunteers",) if totals else report.measures
    if rollup:
        return _statement(ctes, _cells_grouped(dims, names, totals, projected), dims, names, p)
    group, grouping = _grouping(dims, totals)
    measures = ", ".join(f"{_volunteers_sql(dims, volunteer_keys) if m == 'volunteers' else MEASURE_SQL[m]} AS {m}"
                         for m in names)
    grouped = f"SELECT {grouping} AS _set, {''.join(d + ', ' for d in dims)}{measures} FROM ({projected}) t {group}"
    return _statement(ctes, grouped, dims, names, p, state="events")


def _cells_grouped(dims: Sequence[str], names: Sequence[str], totals: bool, projected: str) -> str:
    """`_grouping`'s groups over cells: each group per chunk (`_chunk` in every grouping set), then over
    the chunks. An answer with no dimension, and the grand total of one with a single dimension, is one
    row even over no cell, as the one-step statement gives."""
    chunked = ", ".join(f"{CELLS_CHUNK_SQL[m]} AS _c_{m}" for m in names)
    measures = ", ".join(f"{CELLS_MEASURE_SQL[m]} AS {m}" for m in names)
    keys = "".join(d + ", " for d in dims)
    if not totals:
        per_chunk = f"SELECT {keys}{chunked} FROM ({projected}) t GROUP BY {keys}_chunk"
        return f"SELECT 0 AS _set, {keys}{measures} FROM ({per_chunk}) t" + (f" GROUP BY {', '.join(dims)}" if dims else "")
    if len(dims) == 1:
        per_chunk = f"SELECT {chunked} FROM ({projected}) t GROUP BY _chunk"
        return f"SELECT 1 AS _set, NULL AS {dims[0]}, {measures} FROM ({per_chunk}) t"
    sets = ", ".join("(" + "".join(d + ", " for d in dims if d != left_out) + "_chunk)" for left_out in dims)
    per_chunk = (f"SELECT GROUPING({', '.join(dims)}) AS _set, {keys}{chunked} FROM ({projected}) t "
                 f"GROUP BY GROUPING SETS ({sets})")
    return f"SELECT _set, {keys}{measures} FROM ({per_chunk}) t GROUP BY _set, {', '.join(dims)}"


@dataclass(frozen=True)
class _VerifiedSource:
    table: str
    hours: str


def _verified_source(question: Question, verified_scope: dict) -> tuple[_VerifiedSource, list[str]]:
    """Where skills reads each volunteer's verified hours and programmes, projects, types and focus
    areas: `volunteer_summary` (a few rows per volunteer, kept on write) unless the answer is limited to
    dates, which only the activities carry. The caller's tree applies to both (both have the organisation)."""
    if question.date_from is None and question.date_to is None:
        conditions = ["f.organization_id IN (SELECT id FROM tree)"] if question.tree_root is not None else ["true"]
        return _VerifiedSource("volunteer_summary", "hours"), conditions
    return _VerifiedSource("activity", "approved_hours"), _activity_conditions(**verified_scope, dimensions=())


def skills_sql(question: Question, totals: bool = False, pairs: bool = True) -> Statement:
    """`figures_sql` for `/analytics/skills`: measures `volunteers`, the means and `items` (a list of
    per-item structs); with `totals`, the slice totals' volunteers.

    Per volunteer (merges resolved), the current assessments of the instrument: the earliest baseline and
    the latest endline (ties by id); a volunteer lacking either is left out (`skill_pair`, kept on write:
    store.py). Hours are the volunteer's verified approved hours (within from/to when given). A key that sees
    its tree only sees its volunteers, and their hours and activities in its tree. Without dates or a tree,
    the hours and the activities' programmes, projects, types and focus areas are the pair's own (kept from
    the summary, unless `pairs` is False); otherwise they are read from the summary or, with dates, the
    activities: the same figures either way.
    """
    report, dims, p = question.report, list(question.group_by), _Params()
    if pairs and not totals and skill_totals_answer(question):
        return _skill_totals_sql(question)
    ctes = [_tree_cte(question, p)] if question.tree_root is not None else []
    verified_scope = dict(question=question, expressions=ACTIVITY_EXPRESSIONS, statuses=("verified",), p=p)
    ctes.append("paired AS (SELECT volunteer_id AS vid, baseline_total AS b_total, endline_total AS e_total, "
                f"endline_on AS e_on, items, hours AS all_hours, links AS all_links"
                f"{''.join(f', {name}' for name, _ in SKILL_LINKS.values())} FROM skill_pair "
                f"WHERE instrument = {p(question.instrument)})")
    whole = pairs and question.tree_root is None and question.date_from is None and question.date_to is None
    hours_join = ""
    if whole:
        hours = "pr.all_hours"
    else:
        source, hour_conditions = _verified_source(question, verified_scope)
        ctes.append(f"volunteer_hours AS (SELECT f.survivor_id AS vid, sum(f.{source.hours}) AS hours "
                    f"FROM {source.table} f WHERE {' AND '.join(hour_conditions)} GROUP BY 1)")
        hours, hours_join = "coalesce(h.hours, 0)", " LEFT JOIN volunteer_hours h ON h.vid = pr.vid"
    person_conditions = ["v.organization_id IN (SELECT id FROM tree)"] if question.tree_root is not None else []
    ctes.append(
        f"people AS (SELECT pr.*, {hours} AS hours, v.sex, v.residence_province, v.organization_id, "
        f"{age_sql('pr.e_on', 'v.date_of_birth')} AS _age FROM paired pr LEFT JOIN volunteer v ON v.id = pr.vid"
        f"{hours_join}{' WHERE ' + ' AND '.join(person_conditions) if person_conditions else ''})"
    )
    # Activity dimensions (grouped or filtered) join the distinct (volunteer, values) of their verified
    # activities: one row per volunteer and group, so means are not weighted by activity counts.
    linked = [d for d in SKILLS_ACTIVITY_DIMENSIONS if d in dims]
    involved = {*linked, *(d for d in question.filters if d in SKILLS_ACTIVITY_DIMENSIONS)}
    link_join = ""
    if involved:
        value_conditions = [f"{ACTIVITY_EXPRESSIONS[d]} IN ({p.many(values)})"
                            for d, values in question.filters.items() if d in SKILLS_ACTIVITY_DIMENSIONS]
        columns = "".join(f", {ACTIVITY_EXPRESSIONS[d]} AS {d}" for d in linked)
        if whole and len(involved) == 1:  # that dimension's distinct values, `f.<its column>`
            (dimension,) = involved
            name, column = SKILL_LINKS[dimension]
            rows = f"(SELECT pr.vid, unnest(pr.{name}) AS {column} FROM paired pr) f"
            link_conditions, vid = value_conditions, "vid"
        elif whole:  # `f`: one of the pair's links, a struct with the activity rows' column names
            rows, link_conditions = "(SELECT pr.vid, unnest(pr.all_links) AS f FROM paired pr)", value_conditions
            vid = "vid"
        else:
            rows = f"{source.table} f"
            link_conditions = [*_verified_source(question, verified_scope)[1], *value_conditions]
            vid = "f.survivor_id"
        where = f" WHERE {' AND '.join(link_conditions)}" if link_conditions else ""
        ctes.append(f"links AS (SELECT DISTINCT {vid} AS vid{columns} FROM {rows}{where})")
        link_join = " JOIN links l ON l.vid = p.vid"
    person_filters = [f"{SKILLS_PERSON_EXPRESSIONS[d]} IN ({p.many(values)})"
                      for d, values in question.filters.items() if d in SKILLS_PERSON_EXPRESSIONS]
    cells = "".join(f", {SKILLS_PERSON_EXPRESSIONS[d] if d in SKILLS_PERSON_EXPRESSIONS else 'l.' + d} AS {d}"
                    for d in dims)
    ctes.append(f"cohort AS (SELECT p.vid, p.b_total, p.e_total, p.items{cells} FROM people p"
                f"{link_join}{' WHERE ' + ' AND '.join(person_filters) if person_filters else ''})")
    group, grouping = _grouping(dims, totals)
    if totals:
        grouped = f"SELECT {grouping} AS _set, {''.join(d + ', ' for d in dims)}count(DISTINCT vid) AS volunteers FROM cohort {group}"
        return _statement(ctes, grouped, dims, ("volunteers",), p)
    # A cohort row is one volunteer in one group (people: a row per volunteer; links: distinct per
    # volunteer and values), so a group's rows are its distinct volunteers.
    ctes.append(
        f"cells AS (SELECT {grouping} AS _set, {''.join(d + ', ' for d in dims)}count(*) AS volunteers, "
        "round(avg(b_total), 2) AS baseline_mean, round(avg(e_total), 2) AS endline_mean, "
        f"round(avg(e_total - b_total), 2) AS mean_change FROM cohort {group})"
    )
    ctes.append(f"scored AS (SELECT {''.join(d + ', ' for d in dims)}i.item, i.b AS b_item, i.e AS e_item "
                "FROM (SELECT *, unnest(items) AS i FROM cohort))")
    per_item = (f"SELECT {''.join(d + ', ' for d in dims)}item, round(avg(b_item), 2) AS b, round(avg(e_item), 2) AS e, "
                f"round(avg(e_item - b_item), 2) AS c FROM scored GROUP BY {''.join(d + ', ' for d in dims)}item")
    ctes.append(
        f"items AS (SELECT {''.join(d + ', ' for d in dims)}list({{'item': item, 'b': b, 'e': e, 'c': c}} ORDER BY item) "
        f"AS items FROM ({per_item}) GROUP BY {', '.join(dims) if dims else '()'})"
    )
    on = " AND ".join(f"i.{d} IS NOT DISTINCT FROM c.{d}" for d in dims) or "true"
    grouped = f"SELECT c.*, i.items FROM cells c LEFT JOIN items i ON {on}"
    return _statement(ctes, grouped, dims, report.measures, p)


def skill_totals_answer(question: Question) -> bool:
    """Whether `skill_totals` holds `question`'s cells: seen nationally, over all dates, cut by programme and
    hours band or fewer, filtered by them only, and each cell of one programme (grouped, or one filtered):
    a volunteer of two programmes is in both, so cells summed over programmes would count them twice. The
    bands are a volunteer's one each: summed over."""
    dims, filters = set(question.group_by), question.filters
    return (question.tree_root is None and question.date_from is None and question.date_to is None
            and dims <= {"program", "hours_band"} and set(filters) <= {"program", "hours_band"}
            and ("program" in dims or len(filters.get("program", ())) == 1))


def _skill_totals_sql(question: Question) -> Statement:
    """`skills_sql`'s cells from `skill_totals` (`skill_totals_answer`): sums over the hours bands asked for,
    the means their quotients, as the pairs' averages give them."""
    dims, p = list(question.group_by), _Params()
    conditions = [f"instrument = {p(question.instrument)}",
                  *(f"{d} IN ({p.many(values)})" for d, values in question.filters.items())]
    keys = "".join(d + ", " for d in dims)
    grouped = f"GROUP BY {keys}item"

    def mean(total: str) -> str:
        return f"round(CAST({total} AS DOUBLE) / sum(volunteers), 2)"
    sums = (f"SELECT {keys}item, sum(volunteers) AS volunteers, {mean('sum(baseline)')} AS b, {mean('sum(endline)')} AS e, "
            f"{mean('sum(endline) - sum(baseline)')} AS c FROM skill_totals WHERE {' AND '.join(conditions)} {grouped}")
    by_group = f"GROUP BY {', '.join(dims)}" if dims else "GROUP BY ()"
    items = (f"SELECT {keys}list({{'item': item, 'b': b, 'e': e, 'c': c}} ORDER BY item) AS items FROM sums "
             f"WHERE item IS NOT NULL {by_group}")
    # With no dimension, one cell even over no pair (as the pairs' `GROUP BY ()` gives): sums has one row at most.
    cells = (f"SELECT 0 AS _set, {keys}volunteers, b AS baseline_mean, e AS endline_mean, c AS mean_change "
             "FROM sums WHERE item IS NULL") if dims else (
        "SELECT 0 AS _set, coalesce(max(volunteers), 0) AS volunteers, max(b) AS baseline_mean, max(e) AS endline_mean, "
        "max(c) AS mean_change FROM sums WHERE item IS NULL")
    on = " AND ".join(f"i.{d} IS NOT DISTINCT FROM c.{d}" for d in dims) or "true"
    ctes = [f"sums AS ({sums})", f"cells AS ({cells})", f"items AS ({items})"]
    return _statement(ctes, f"SELECT c.*, i.items FROM cells c LEFT JOIN items i ON {on}", dims,
                      question.report.measures, p)


# ---- reading results ----------------------------------------------------------------------------------
def _items(structs: list[dict] | None) -> dict[str, dict[str, float]]:
    return {s["item"]: {"baseline_mean": s["b"], "endline_mean": s["e"], "mean_change": s["c"]} for s in structs or []}


def figures_of(question: Question, columns: Sequence[str], rows: Sequence[tuple]) -> Figures:
    """Cells or slice totals out of a statement's rows (`columns`: the statement's)."""
    dims = list(question.group_by)
    index = {name: i for i, name in enumerate(columns)}
    as_of = rows[0][index["as_of"]] if rows else None
    cells: list[dict[str, Any]] = []
    totals: dict[str, dict[tuple, int]] = {d: {} for d in dims}
    for row in rows:
        values = tuple(row[index[d]] for d in dims)
        grouping = row[index["_set"]]
        if grouping is None:  # no cell at all: the row only carries as_of
            continue
        if grouping == 0:
            cell = dict(zip(dims, values))
            for measure in question.report.measures:
                value = row[index[measure]]
                cell[measure] = _items(value) if measure == "items" else _plain(value)
            cells.append(cell)
            continue
        # GROUPING() sets bit (n - 1 - j) when dimension j is left out; each totals set leaves out one.
        left_out = next(j for j in range(len(dims)) if grouping & (1 << (len(dims) - 1 - j)))
        totals[dims[left_out]][values[:left_out] + values[left_out + 1:]] = row[index["volunteers"]]
    return Figures(as_of, cells, totals)


def _plain(value: Any) -> Any:
    """DuckDB's HUGEINT sums and DECIMAL rounding come back as Python int/Decimal; JSON wants int/float."""
    if value is None or isinstance(value, int | float | str):
        return value
    return float(value)


# ---- checks against the store ---------------------------------------------------------------------
def visible_references_sql(question: Question) -> Statement | None:
    """The organisation and project ids of the filters that exist and the caller may see, or None when
    no filter names one. A filter naming another (or none) is a 404, as everywhere in the API."""
    wanted = [(kind, value) for kind in REFERENCES for value in question.filters.get(kind, ())]
    if not wanted:
        return None
    p = _Params()
    ctes = [_tree_cte(question, p)] if question.tree_root is not None else []
    in_tree = " AND {column} IN (SELECT id FROM tree)" if question.tree_root is not None else ""
    parts = []
    for kind, table, column in (("organization", "organization", "id"), ("project", "project", "organization_id")):
        values = question.filters.get(kind, ())
        if values:
            parts.append(f"SELECT '{kind}', id FROM {table} WHERE id IN ({p.many(values)})"
                         + in_tree.format(column=column))
    return Statement(f"{_with(ctes)}{' UNION ALL '.join(parts)}", p.values, ("kind", "id"))


def organizations_sql(question: Question) -> Statement:
    """How many organisations the store knows that the caller may see."""
    p = _Params()
    if question.tree_root is None:
        return Statement("SELECT count(*) FROM organization", [], ("organizations",))
    return Statement(f"{_with([_tree_cte(question, p)])}SELECT count(*) FROM tree t JOIN organization o ON o.id = t.id",
                     p.values, ("organizations",))


INSTRUMENTS_SQL = "SELECT DISTINCT instrument FROM assessment ORDER BY instrument"
