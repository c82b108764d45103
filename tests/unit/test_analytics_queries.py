"""Unit tests of the analytics figures (services/analytics/queries.py, figures.py, formats.py) on an
in-memory DuckDB store filled by hand: every dimension, combinations, filters, status, age band on the
activity date, ISO weeks across a year boundary, residence placement, merges, visibility, skills,
suppression, bad input, CSV and HXL. Every expected figure is computed by hand in the comments."""
from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import orjson
import pytest

from services.analytics import figures, formats, queries
from services.analytics.projections import rederive
from services.analytics.queries import REPORTS
from services.analytics.store import AnalyticsStore
from shared.caller import CallerContext
from shared.errors import ProblemError

EVERYTHING = frozenset({"analytics:read", "analytics:unsuppressed"})


def ids(*names: str) -> dict[str, uuid.UUID]:
    return {name: uuid.uuid4() for name in names}


@dataclass
class World:
    """A store and the ids of what was put in it, by short name."""

    store: AnalyticsStore
    org: dict[str, uuid.UUID] = field(default_factory=dict)
    vol: dict[str, uuid.UUID] = field(default_factory=dict)
    proj: dict[str, uuid.UUID] = field(default_factory=dict)
    runs: dict[str, tuple[uuid.UUID, str]] = field(default_factory=dict)  # project → (programme id, organisation)

    def run(self, sql: str, params: list) -> None:
        # Rows written by hand: the columns and rows the projections derive on write are derived here.
        def work(conn):
            conn.execute(sql, params)
            rederive(conn)
        self.store.write(work)

    def organization(self, name: str, parent: str | None = None) -> None:
        self.org[name] = uuid.uuid4()
        self.run("INSERT INTO organization (id, parent_id, kind, national) VALUES (?, ?, 'ngo', false)",
                 [self.org[name], self.org[parent] if parent else None])

    def project(self, name: str, program_id: uuid.UUID, org: str) -> None:
        self.proj[name] = uuid.uuid4()
        self.runs[name] = (program_id, org)
        self.run("INSERT INTO project (id, program_id, organization_id) VALUES (?, ?, ?)",
                 [self.proj[name], program_id, self.org[org]])

    def volunteer(self, name: str, org: str, sex: str, born: str, residence: str | None,
                  merged_into: str | None = None) -> None:
        """`residence`: a province code, or a commune code (its first four digits are the district)."""
        self.vol[name] = uuid.uuid4()
        self.run("INSERT INTO volunteer (id, organization_id, sex, date_of_birth, residence_province, "
                 "residence_district, merged_into) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 [self.vol[name], self.org[org], sex, date.fromisoformat(born), residence and residence[:2],
                  residence[:4] if residence and len(residence) >= 4 else None,
                  self.vol[merged_into] if merged_into else None])

    def activity(self, volunteer: str, on: str, status: str, hours: float, approved: float | None, location: str,
                 project: str = "P1", activity_type: str = "tree_planting", focus_area: str = "environment",
                 ben: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        # A volunteer not in `vol` is one the store has not heard of (an activity before its registration).
        volunteer_id = self.vol.setdefault(volunteer, uuid.uuid4())
        program_id, org = self.runs[project]
        self.run(
            "INSERT INTO activity (id, revision, volunteer_id, project_id, program_id, organization_id, activity_type, "
            "focus_area, date, hours, approved_hours, status, location_code, province, district, ben_female, ben_male, "
            "ben_other, ben_children) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [uuid.uuid4(), volunteer_id, self.proj[project], program_id, self.org[org], activity_type, focus_area,
             date.fromisoformat(on), hours, approved, status, location, location[:2],
             location[:4] if len(location) >= 4 else None, *ben])

    def assessment(self, volunteer: str, phase: str, taken_on: str, scores: dict[str, int],
                   instrument: str = "soft-skills-v1", replaced: bool = False) -> None:
        self.run("INSERT INTO assessment (id, volunteer_id, instrument, phase, taken_on, scores, total, replaced_by) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 [uuid.uuid4(), self.vol[volunteer], instrument, phase, date.fromisoformat(taken_on),
                  orjson.dumps(scores).decode(), sum(scores.values()), uuid.uuid4() if replaced else None])


def national(scopes: frozenset[str] = EVERYTHING) -> CallerContext:
    return CallerContext("national", uuid.uuid4(), scopes, national=True)


def key_of(org_id: uuid.UUID, scopes: frozenset[str] = EVERYTHING) -> CallerContext:
    return CallerContext("org", org_id, scopes, national=False)


async def ask(w: World, report: str, caller: CallerContext | None = None, k: int = 5, **params) -> dict:
    caller = caller or national()
    pairs = [(name.rstrip("_"), value) for name, values in params.items()
             for value in (values if isinstance(values, list) else [values])]
    question = figures.parse_question(REPORTS[report], pairs, caller)
    return await figures.answer(w.store, question, caller, k)


def table(answer: dict, *measures: str) -> dict:
    """{(dimension values...): (measures...)} of an answer, for exact comparison."""
    return {tuple(row[d] for d in answer["group_by"]): tuple(row[m] for m in measures) for row in answer["rows"]}


def organisations_and_projects() -> World:
    """Organisations A (with A1 below it) and B; programmes VMC and AYRG; projects P1 (A, VMC),
    P2 (A1, AYRG), P3 (B, VMC)."""
    w = World(AnalyticsStore(":memory:"))
    w.organization("A")
    w.organization("A1", parent="A")
    w.organization("B")
    programs = ids("VMC", "AYRG")
    for code, program_id in programs.items():
        w.run("INSERT INTO program (id, code) VALUES (?, ?)", [program_id, code])
    w.project("P1", programs["VMC"], "A")
    w.project("P2", programs["AYRG"], "A1")
    w.project("P3", programs["VMC"], "B")
    return w


# ---- the activities world ------------------------------------------------------------------------------
@pytest.fixture
def world() -> World:
    """`organisations_and_projects`, and volunteers V1 (female, 15 Mar 2008, lives in commune 120304 of 12), V2 (male,
    1 Jan 2000, 17), V3 (female, 30 Jun 1990, 12), V5 (a duplicate merged into V1) and V4, whom the store
    has not heard of."""
    w = organisations_and_projects()
    w.volunteer("V1", "A", "female", "2008-03-15", "120304")
    w.volunteer("V2", "A", "male", "2000-01-01", "17")
    w.volunteer("V3", "B", "female", "1990-06-30", "12")
    w.volunteer("V5", "A", "female", "2008-03-15", "12", merged_into="V1")
    # a1: V1 the day before her 18th birthday (15-17), a Saturday of ISO week 2026-W11; 2.5 of 3 h approved.
    w.activity("V1", "2026-03-14", "verified", 3, 2.5, "1201", ben=(4, 3, 0, 2))
    # a2: V1 on her 18th birthday (18-24), recorded at province level (no district).
    w.activity("V1", "2026-03-15", "verified", 4, 4, "12", activity_type="clean_up", ben=(1, 1, 1, 0))
    # a3: V2, Thursday 31 Dec 2026: ISO week 2026-W53, 2026-Q4; 26 years old.
    w.activity("V2", "2026-12-31", "verified", 2, 1.5, "1702", project="P2", activity_type="digital_literacy_training_given", focus_area="digital_literacy", ben=(0, 2, 0, 1))
    # a4: V3, Friday 1 Jan 2027: still ISO week 2026-W53, but 2027-Q1 and year 2027; 36 years old.
    w.activity("V3", "2027-01-01", "verified", 6, 6, "0102", project="P3", activity_type="health_promotion", focus_area="health", ben=(5, 5, 0, 3))
    # a5: V4, unknown to the store: counts in hours, sex and age band "unknown". 2026-W12.
    w.activity("V4", "2026-03-20", "verified", 2, 2, "1201")
    # a6: V5, merged into V1: counts for V1 (female, 18 on that day). 2026-W12.
    w.activity("V5", "2026-03-20", "verified", 1, 1, "1201")
    # a7: V2 submitted 5 h (counted only with status=all); a8 rejected and a9 voided never count.
    w.activity("V2", "2026-03-20", "submitted", 5, None, "1201")
    w.activity("V2", "2026-03-21", "rejected", 3, None, "1201")
    w.activity("V3", "2026-03-22", "voided", 2, None, "1201")
    return w


# Verified: hours 2.5 + 4 + 1.5 + 6 + 2 + 1 = 17, 6 activities, volunteers V1 (a1 a2 a6), V2, V3, V4 = 4.
async def test_overview_is_one_row_of_verified_figures(world: World):
    answer = await ask(world, "overview")
    assert answer["group_by"] == []
    assert answer["rows"] == [{"volunteers": 4, "hours": 17.0, "activities": 6, "beneficiaries": 22,
                               "beneficiaries_children": 6, "suppressed": False}]
    # The organisations analytics knows in the caller's view: A, A1, B; a key of A sees A and A1.
    assert answer["organizations"] == 3
    assert (await ask(world, "overview", key_of(world.org["A"])))["organizations"] == 2
    assert "organizations" not in await ask(world, "hours")


async def test_status_all_adds_submitted_entries_at_claimed_hours_never_rejected_or_voided(world: World):
    answer = await ask(world, "hours", status="all")
    assert table(answer, "hours", "activities", "volunteers") == {(): (22.0, 7, 4)}
    answer = await ask(world, "hours", status="all", group_by="province")
    assert table(answer, "hours", "activities", "volunteers")[("12",)] == (14.5, 5, 3)


EACH_DIMENSION = {
    "province": {("01",): (6.0, 1, 1), ("12",): (9.5, 4, 2), ("17",): (1.5, 1, 1)},
    "district": {("0102",): (6.0, 1, 1), ("1201",): (5.5, 3, 2), ("1702",): (1.5, 1, 1), (None,): (4.0, 1, 1)},
    "sex": {("female",): (13.5, 4, 2), ("male",): (1.5, 1, 1), ("unknown",): (2.0, 1, 1)},
    "age_band": {("15-17",): (2.5, 1, 1), ("18-24",): (5.0, 2, 1), ("25-30",): (1.5, 1, 1), ("31+",): (6.0, 1, 1),
                 ("unknown",): (2.0, 1, 1)},
    "day": {("2026-03-14",): (2.5, 1, 1), ("2026-03-15",): (4.0, 1, 1), ("2026-03-20",): (3.0, 2, 2),
            ("2026-12-31",): (1.5, 1, 1), ("2027-01-01",): (6.0, 1, 1)},
    "week": {("2026-W11",): (6.5, 2, 1), ("2026-W12",): (3.0, 2, 2), ("2026-W53",): (7.5, 2, 2)},
    "month": {("2026-03",): (9.5, 4, 2), ("2026-12",): (1.5, 1, 1), ("2027-01",): (6.0, 1, 1)},
    "quarter": {("2026-Q1",): (9.5, 4, 2), ("2026-Q4",): (1.5, 1, 1), ("2027-Q1",): (6.0, 1, 1)},
    "year": {("2026",): (11.0, 5, 3), ("2027",): (6.0, 1, 1)},
    "program": {("AYRG",): (1.5, 1, 1), ("VMC",): (15.5, 5, 3)},
    "activity_type": {("clean_up",): (4.0, 1, 1), ("digital_literacy_training_given",): (1.5, 1, 1),
                      ("health_promotion",): (6.0, 1, 1), ("tree_planting",): (5.5, 3, 2)},
    "focus_area": {("digital_literacy",): (1.5, 1, 1), ("environment",): (9.5, 4, 2), ("health",): (6.0, 1, 1)},
}


@pytest.mark.parametrize("dimension", sorted(EACH_DIMENSION))
async def test_hours_by_each_dimension(world: World, dimension: str):
    answer = await ask(world, "hours", group_by=dimension)
    assert answer["group_by"] == [dimension]
    assert table(answer, "hours", "activities", "volunteers") == EACH_DIMENSION[dimension]
    assert [row["suppressed"] for row in answer["rows"]] == [False] * len(answer["rows"])


async def test_hours_by_project_and_organization_are_ids(world: World):
    w = world
    by_project = table(await ask(w, "hours", group_by="project"), "hours")
    assert by_project == {(str(w.proj["P1"]),): (9.5,), (str(w.proj["P2"]),): (1.5,), (str(w.proj["P3"]),): (6.0,)}
    by_org = table(await ask(w, "hours", group_by="organization"), "hours")
    assert by_org == {(str(w.org["A"]),): (9.5,), (str(w.org["A1"]),): (1.5,), (str(w.org["B"]),): (6.0,)}


async def test_combined_dimensions_and_repeated_group_by(world: World):
    expected = {("01", "female"): (6.0, 1, 1), ("12", "female"): (7.5, 3, 1), ("12", "unknown"): (2.0, 1, 1),
                ("17", "male"): (1.5, 1, 1)}
    for group_by in ("province,sex", ["province", "sex"]):
        answer = await ask(world, "hours", group_by=group_by)
        assert answer["group_by"] == ["province", "sex"]
        assert table(answer, "hours", "activities", "volunteers") == expected
    # Rows come in dimension order.
    assert [tuple(r[d] for d in ("province", "sex")) for r in answer["rows"]] == sorted(expected)
    three = await ask(world, "hours", group_by="year,quarter,week")
    assert table(three, "hours") == {("2026", "2026-Q1", "2026-W11"): (6.5,), ("2026", "2026-Q1", "2026-W12"): (3.0,),
                                     ("2026", "2026-Q4", "2026-W53"): (1.5,), ("2027", "2027-Q1", "2026-W53"): (6.0,)}


@pytest.mark.parametrize(("filters", "hours"), [
    ({"province": "12", "month": "2026-03"}, 9.5),
    ({"province": "01,17"}, 7.5),
    ({"province": ["01", "17"]}, 7.5),
    ({"district": "1201"}, 5.5),
    ({"week": "2026-W53"}, 7.5),
    ({"day": "2026-03-20"}, 3.0),
    ({"quarter": "2026-Q1"}, 9.5),
    ({"year": "2027"}, 6.0),
    ({"from_": "2026-03-15", "to": "2026-12-31"}, 8.5),
    ({"from_": "2026-03-20"}, 10.5),
    ({"to": "2026-03-14"}, 2.5),
    ({"sex": "unknown"}, 2.0),
    ({"age_band": "15-17"}, 2.5),
    ({"age_band": "18-24,31+"}, 11.0),
    ({"program": "AYRG"}, 1.5),
    ({"activity_type": "tree_planting", "focus_area": "environment"}, 5.5),
    ({"program": "NOPE"}, 0.0),
])
async def test_filters(world: World, filters: dict, hours: float):
    answer = await ask(world, "hours", **filters)
    assert answer["rows"][0]["hours"] == hours, filters


async def test_filters_by_reference(world: World):
    w = world
    assert (await ask(w, "hours", organization=str(w.org["A1"])))["rows"][0]["hours"] == 1.5
    assert (await ask(w, "hours", project=f"{w.proj['P1']},{w.proj['P3']}"))["rows"][0]["hours"] == 15.5


async def test_volunteers_are_placed_by_residence(world: World):
    # Residence: V1 and V3 in 12, V2 in 17, V4 unknown; a3 (V2) happened in 17, a4 (V3) in 01.
    answer = await ask(world, "volunteers", group_by="province")
    assert table(answer, "volunteers") == {("12",): (2,), ("17",): (1,), (None,): (1,)}
    assert set(answer["rows"][0]) == {"province", "volunteers", "suppressed"}
    assert table(await ask(world, "volunteers", province="12"), "volunteers") == {(): (2,)}
    # Residence district: V1's commune 120304 is in district 1203; V2 and V3 gave a province only.
    assert table(await ask(world, "volunteers", group_by="district"), "volunteers") == {("1203",): (1,), (None,): (3,)}
    assert table(await ask(world, "volunteers", district="1203"), "volunteers") == {(): (1,)}
    # By sex and age band on the activity date: V1 was 17 (a1) and 18 (a2, a6), so she is in both bands.
    by_age = table(await ask(world, "volunteers", group_by="age_band"), "volunteers")
    assert by_age == {("15-17",): (1,), ("18-24",): (1,), ("25-30",): (1,), ("31+",): (1,), ("unknown",): (1,)}
    assert table(await ask(world, "volunteers", group_by="sex"), "volunteers") == {
        ("female",): (2,), ("male",): (1,), ("unknown",): (1,)}


async def test_beneficiaries(world: World):
    answer = await ask(world, "beneficiaries", group_by="focus_area")
    measures = ("beneficiaries_female", "beneficiaries_male", "beneficiaries_other", "beneficiaries_children",
                "beneficiaries", "activities", "volunteers")
    assert table(answer, *measures) == {
        ("digital_literacy",): (0, 2, 0, 1, 2, 1, 1),
        ("environment",): (5, 4, 1, 2, 10, 4, 2),
        ("health",): (5, 5, 0, 3, 10, 1, 1),
    }


async def test_a_key_sees_its_organisation_tree_only(world: World):
    w = world
    # A and A1 below it: a1 a2 a5 a6 (P1) and a3 (P2) = 11 h, V1 V4 V2.
    assert table(await ask(w, "hours", key_of(w.org["A"])), "hours", "volunteers") == {(): (11.0, 3)}
    assert table(await ask(w, "hours", key_of(w.org["A1"])), "hours", "volunteers") == {(): (1.5, 1)}
    assert table(await ask(w, "hours", key_of(w.org["B"]), group_by="organization"), "hours") == {
        (str(w.org["B"]),): (6.0,)}
    assert table(await ask(w, "hours", key_of(w.org["A"]), organization=str(w.org["A1"])), "hours") == {(): (1.5,)}
    # Another tree's organisation or project, or one that does not exist: 404 alike.
    for name, value in (("organization", w.org["B"]), ("project", w.proj["P3"]), ("organization", uuid.uuid4()),
                        ("project", uuid.uuid4())):
        with pytest.raises(ProblemError) as caught:
            await ask(w, "hours", key_of(w.org["A"]), **{name: str(value)})
        assert caught.value.status == 404, name
    with pytest.raises(ProblemError) as caught:
        await ask(w, "hours", key_of(w.org["A1"]), organization=str(w.org["A"]))  # a parent is not below
    assert caught.value.status == 404


# ---- suppression ----------------------------------------------------------------------------------
async def test_small_cells_are_suppressed_and_their_lone_complement_too(world: World):
    plain = national(frozenset({"analytics:read"}))
    # k = 2: AYRG (1 volunteer) is hidden; its slice (all programmes: 4 volunteers) would give it away
    # as total minus VMC, so VMC is hidden too.
    answer = await ask(world, "hours", plain, k=2, group_by="program")
    assert answer["rows"] == [
        {"program": "AYRG", "hours": None, "activities": None, "volunteers": None, "suppressed": True},
        {"program": "VMC", "hours": None, "activities": None, "volunteers": None, "suppressed": True},
    ]
    # Two small cells in the slice: neither can be read off the total, the rest stays.
    by_province = table(await ask(world, "hours", plain, k=2, group_by="province"), "hours", "suppressed")
    assert by_province == {("01",): (None, True), ("12",): (9.5, False), ("17",): (None, True)}
    # The overview of fewer than k volunteers is itself hidden; analytics:unsuppressed sees everything.
    assert (await ask(world, "overview", plain, k=5))["rows"][0]["suppressed"] is True
    assert (await ask(world, "overview", national(), k=5))["rows"][0]["hours"] == 17.0


async def test_slice_totals_count_distinct_volunteers_one_dimension_fewer(world: World):
    question = figures.parse_question(REPORTS["hours"], [("group_by", "province,sex")], national())
    statement = queries.figures_sql(question, totals=True)
    totals = queries.figures_of(question, statement.columns, world.store.query(statement.sql, statement.params))
    assert totals.rows == []
    # Province left out: per sex, V1 and V3 are female; sex left out: per province, 12 holds V1 and V4.
    assert totals.slice_totals == {"province": {("female",): 2, ("male",): 1, ("unknown",): 1},
                                   "sex": {("01",): 1, ("12",): 2, ("17",): 1}}
    one = figures.parse_question(REPORTS["volunteers"], [("group_by", "sex")], national())
    statement = queries.figures_sql(one, totals=True)
    assert queries.figures_of(one, statement.columns, world.store.query(statement.sql, statement.params)).slice_totals == {
        "sex": {(): 4}}


async def test_complementary_suppression_across_two_dimensions(world: World):
    plain = national(frozenset({"analytics:read"}))
    # k = 2. Cells: (01, 2027) V3 and (17, 2026) V2 are hidden; (12, 2026) V1 V4 is not, but it is the
    # only other cell of the slice year = 2026, whose total (V1 V2 V4) is shown: hidden too.
    answer = await ask(world, "hours", plain, k=2, group_by="province,year")
    assert table(answer, "hours", "suppressed") == {
        ("01", "2027"): (None, True), ("12", "2026"): (None, True), ("17", "2026"): (None, True)}


async def test_an_empty_answer_still_says_as_of(world: World):
    world.run("INSERT INTO store_state (name, as_of) VALUES ('events', TIMESTAMPTZ '2026-03-21 08:00:00+07')", [])
    answer = await ask(world, "hours", group_by="province", program="NOPE")
    assert answer["rows"] == []
    assert answer["as_of"].isoformat() == "2026-03-21T01:00:00+00:00"


async def test_an_overview_of_no_activity_counts_zero_volunteers_and_is_suppressed_not_an_error(world: World):
    # One row (no dimension) over no activity: 0 volunteers, whichever way they are counted.
    everything = await ask(world, "overview", program="NOPE")
    assert [(row["volunteers"], row["activities"]) for row in everything["rows"]] == [(0, 0)]
    plain = await ask(world, "overview", national(frozenset({"analytics:read"})), program="NOPE")
    assert [row["suppressed"] for row in plain["rows"]] == [True]


# ---- skills ------------------------------------------------------------------------------------------
@pytest.fixture
def skills() -> World:
    """S1 (female, 2000-01-01, lives in 12, org A): 10 h in Feb + 10 h in May through S5, merged into her;
    S2 (male, 2008-06-01, 17, A): 30 h VMC + 5 h AYRG; S3 (female, 1995-01-01, 12, B): 60 h VMC;
    S6 (male, 2010-03-01, 12, A1): no activity; S4 (A): a baseline only, left out."""
    w = organisations_and_projects()
    w.volunteer("S1", "A", "female", "2000-01-01", "12")
    w.volunteer("S2", "A", "male", "2008-06-01", "17")
    w.volunteer("S3", "B", "female", "1995-01-01", "12")
    w.volunteer("S4", "A", "female", "2001-01-01", "12")
    w.volunteer("S5", "A", "female", "2000-01-01", "12", merged_into="S1")
    w.volunteer("S6", "A1", "male", "2010-03-01", "12")
    w.activity("S1", "2026-02-01", "verified", 10, 10, "12")
    w.activity("S5", "2026-05-01", "verified", 10, 10, "12")
    w.activity("S1", "2026-05-02", "submitted", 10, None, "12")  # not verified: not in the band
    w.activity("S2", "2026-02-01", "verified", 15, 15, "17")
    w.activity("S2", "2026-02-02", "verified", 15, 15, "17")
    w.activity("S2", "2026-02-03", "verified", 5, 5, "17", project="P2")
    for day in ("01", "02", "03"):
        w.activity("S3", f"2026-02-{day}", "verified", 20, 20, "12", project="P3")
    w.assessment("S1", "baseline", "2026-01-05", {"communication": 1, "teamwork": 1}, replaced=True)
    w.assessment("S1", "baseline", "2026-01-10", {"communication": 4, "teamwork": 6})
    w.assessment("S1", "endline", "2026-06-10", {"communication": 7, "teamwork": 9})
    w.assessment("S2", "baseline", "2026-01-10", {"communication": 4, "teamwork": 4})
    w.assessment("S2", "endline", "2026-06-01", {"communication": 5, "teamwork": 6})
    w.assessment("S3", "baseline", "2026-01-10", {"communication": 6, "teamwork": 6})
    w.assessment("S3", "endline", "2026-03-01", {"communication": 0, "teamwork": 0})  # an earlier endline
    w.assessment("S3", "endline", "2026-06-15", {"communication": 10, "teamwork": 10})
    w.assessment("S4", "baseline", "2026-01-10", {"communication": 3, "teamwork": 3})
    w.assessment("S6", "baseline", "2026-01-10", {"communication": 2, "teamwork": 3})
    w.assessment("S6", "endline", "2026-06-01", {"communication": 3, "teamwork": 4})
    w.assessment("S6", "baseline", "2026-01-10", {"device_basics": 1}, instrument="digital-literacy-v1")
    return w


SKILL_MEASURES = ("volunteers", "baseline_mean", "endline_mean", "mean_change")


async def test_skills_overall_with_items(skills: World):
    # Totals: baselines 10, 8, 12, 5 → 8.75; endlines 16, 11, 20, 7 → 13.5; change 4.75.
    answer = await ask(skills, "skills", instrument="soft-skills-v1")
    assert answer["rows"] == [{
        "volunteers": 4, "baseline_mean": 8.75, "endline_mean": 13.5, "mean_change": 4.75,
        "items": {"communication": {"baseline_mean": 4.0, "endline_mean": 6.25, "mean_change": 2.25},
                  "teamwork": {"baseline_mean": 4.75, "endline_mean": 7.25, "mean_change": 2.5}},
        "suppressed": False,
    }]


async def test_skills_by_hours_band(skills: World):
    # S6 0 h; S1 20 h (with her merged duplicate's 10); S2 35 h; S3 60 h.
    answer = await ask(skills, "skills", instrument="soft-skills-v1", group_by="hours_band")
    assert table(answer, *SKILL_MEASURES) == {
        ("0-19",): (1, 5.0, 7.0, 2.0), ("20-49",): (2, 9.0, 13.5, 4.5), ("50+",): (1, 12.0, 20.0, 8.0)}
    assert answer["rows"][1]["items"] == {
        "communication": {"baseline_mean": 4.0, "endline_mean": 6.0, "mean_change": 2.0},
        "teamwork": {"baseline_mean": 5.0, "endline_mean": 7.5, "mean_change": 2.5}}
    # Hours within from/to only: up to March, S1 has 10 h.
    early = await ask(skills, "skills", instrument="soft-skills-v1", group_by="hours_band", to="2026-03-31")
    assert table(early, "volunteers") == {("0-19",): (2,), ("20-49",): (1,), ("50+",): (1,)}


async def test_skills_by_volunteer_dimensions(skills: World):
    async def by(**params) -> dict:
        return table(await ask(skills, "skills", instrument="soft-skills-v1", **params), *SKILL_MEASURES)

    # Residence: 12 holds S1, S3, S6 (10+12+5)/3, (16+20+7)/3 = 14.33, 16/3 = 5.33.
    assert await by(group_by="province") == {("12",): (3, 9.0, 14.33, 5.33), ("17",): (1, 8.0, 11.0, 3.0)}
    assert await by(group_by="sex") == {("female",): (2, 11.0, 18.0, 7.0), ("male",): (2, 6.5, 9.0, 2.5)}
    # Age at the endline: S1 26, S2 18, S3 31, S6 16.
    assert await by(group_by="age_band") == {("15-17",): (1, 5.0, 7.0, 2.0), ("18-24",): (1, 8.0, 11.0, 3.0),
                                            ("25-30",): (1, 10.0, 16.0, 6.0), ("31+",): (1, 12.0, 20.0, 8.0)}
    # Programme of their verified activities: S2 is in both; S6, with none, in neither.
    assert await by(group_by="program") == {("AYRG",): (1, 8.0, 11.0, 3.0), ("VMC",): (3, 10.0, 15.67, 5.67)}
    assert await by(program="AYRG", group_by="sex") == {("male",): (1, 8.0, 11.0, 3.0)}
    assert await by(group_by="organization") == {
        (str(skills.org["A"]),): (2, 9.0, 13.5, 4.5), (str(skills.org["A1"]),): (1, 5.0, 7.0, 2.0),
        (str(skills.org["B"]),): (1, 12.0, 20.0, 8.0)}


async def test_skills_of_a_key_cover_its_tree_and_instruments_are_checked(skills: World):
    answer = await ask(skills, "skills", key_of(skills.org["A"]), instrument="soft-skills-v1")
    assert table(answer, *SKILL_MEASURES) == {(): (3, 7.67, 11.33, 3.67)}  # S1, S2, S6
    for instrument in ("nope", None):
        with pytest.raises(ProblemError) as caught:
            await ask(skills, "skills", **({"instrument": instrument} if instrument else {}))
        assert caught.value.status == 422
        assert caught.value.errors[0]["allowed"] == ["digital-literacy-v1", "soft-skills-v1"]


async def test_suppressed_skills_rows_hide_items(skills: World):
    answer = await ask(skills, "skills", national(frozenset({"analytics:read"})), k=2,
                       instrument="soft-skills-v1", group_by="sex")
    assert [row["suppressed"] for row in answer["rows"]] == [False, False]
    answer = await ask(skills, "skills", national(frozenset({"analytics:read"})), k=3,
                       instrument="soft-skills-v1", group_by="sex")
    assert answer["rows"][0] == {"sex": "female", "volunteers": None, "baseline_mean": None, "endline_mean": None,
                                 "mean_change": None, "items": None, "suppressed": True}
    # Two dimensions: every (sex, band) cell holds one volunteer; the slice totals are computed and used.
    answer = await ask(skills, "skills", national(frozenset({"analytics:read"})), k=2,
                       instrument="soft-skills-v1", group_by="sex,hours_band")
    assert [(r["sex"], r["hours_band"], r["suppressed"]) for r in answer["rows"]] == [
        ("female", "20-49", True), ("female", "50+", True), ("male", "0-19", True), ("male", "20-49", True)]
    question = figures.parse_question(REPORTS["skills"], [("instrument", "soft-skills-v1"),
                                                          ("group_by", "sex,hours_band")], national())
    statement = queries.skills_sql(question, totals=True)
    assert queries.figures_of(question, statement.columns, skills.store.query(statement.sql, statement.params)).slice_totals == {
        "sex": {("0-19",): 1, ("20-49",): 2, ("50+",): 1}, "hours_band": {("female",): 2, ("male",): 2}}


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("report", "params", "loc", "allowed"), [
    ("hours", [("group_by", "province,colour")], "group_by", "province"),
    ("hours", [("colour", "red")], "colour", "group_by"),
    ("volunteers", [("group_by", "commune")], "group_by", "district"),
    ("hours", [("status", "approved")], "status", "all"),
    ("hours", [("sex", "f")], "sex", "female"),
    ("hours", [("age_band", "18-25")], "age_band", "18-24"),
    ("skills", [("hours_band", "20+")], "hours_band", "50+"),
    ("skills", [("status", "all")], "status", "instrument"),
    ("hours", [("from", "2026-03-02"), ("to", "2026-03-01")], "from", None),
    ("hours", [("from", "2026-02-30")], "from", None),
    ("hours", [("to", "yesterday")], "to", None),
    ("hours", [("from", "2026-03-01"), ("from", "2026-03-02")], "from", None),
    ("hours", [("month", "2026-13")], "month", None),
    ("hours", [("week", "2026-W54")], "week", None),
    ("hours", [("week", "2025-W53")], "week", None),  # 2025 has 52 ISO weeks
    ("hours", [("quarter", "2026-Q5")], "quarter", None),
    ("hours", [("day", "2026-3-5")], "day", None),
    ("hours", [("year", "26")], "year", None),
    ("hours", [("province", "120")], "province", None),
    ("hours", [("district", "12")], "district", None),
    ("hours", [("project", "P1")], "project", None),
    ("hours", [("program", ",")], "program", None),
    ("hours", [("program", "x" * 101)], "program", None),
])
def test_bad_questions_are_422_naming_the_parameter_and_what_is_allowed(report, params, loc, allowed):
    with pytest.raises(ProblemError) as caught:
        figures.parse_question(REPORTS[report], params, national())
    problem = caught.value
    assert problem.status == 422
    assert problem.errors and problem.errors[0]["loc"] == ["query", loc], problem.errors
    if allowed:
        assert allowed in problem.errors[0]["allowed"], problem.errors


def test_period_ranges():
    assert figures.period_range("week", "2026-W09") == (date(2026, 2, 23), date(2026, 3, 1))
    assert figures.period_range("week", "2026-W53") == (date(2026, 12, 28), date(2027, 1, 3))
    assert figures.period_range("month", "2024-02") == (date(2024, 2, 1), date(2024, 2, 29))
    assert figures.period_range("quarter", "2026-Q4") == (date(2026, 10, 1), date(2026, 12, 31))
    assert figures.period_range("year", "9999") == (date(9999, 1, 1), date(9999, 12, 31))
    # "today" is Phnom Penh's date (UTC+7), whatever the server's time zone.
    today = datetime.now(timezone(timedelta(hours=7))).date()
    assert figures.period_range("day", "today") == (today, today)
    question = figures.parse_question(REPORTS["hours"], [("from", "2026-01-01"), ("to", "today")], national())
    assert (question.date_from, question.date_to) == (date(2026, 1, 1), today)


# ---- formats ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("accept", "csv_wanted"), [
    (None, False), ("*/*", False), ("application/json", False), ("text/csv", True), ("text/csv, */*", True),
    ("application/json, text/csv", False), ("application/json;q=0.5, text/csv", True), ("text/*", True),
    ("text/csv;q=0", False), ("text/csv;q=oops", False),
])
def test_content_negotiation(accept, csv_wanted):
    assert formats.wants_csv(accept) is csv_wanted


def test_csv_and_hxl():
    answer = {"as_of": None, "group_by": ["province", "month"], "rows": [
        {"province": "12", "month": "2026-03", "hours": 9.5, "activities": 4, "volunteers": 6, "suppressed": False},
        {"province": "17", "month": "2026-03", "hours": None, "activities": None, "volunteers": None, "suppressed": True},
    ]}
    plain = formats.to_csv("hours", answer, ["hours", "activities", "volunteers"], hxl=False)
    assert plain == ("province,month,hours,activities,volunteers,suppressed\r\n12,2026-03,9.5,4,6,false\r\n"
                     "17,2026-03,,,,true\r\n")
    hxl = list(csv.reader(io.StringIO(formats.to_csv("volunteers", answer, ["hours", "activities", "volunteers"],
                                                     hxl=True))))
    assert hxl[1] == ["#adm1+code+residence", "#date+month", "#indicator+hours", "#indicator+activities",
                      "#indicator+volunteers", "#meta+suppressed"]
    assert len(hxl) == 4


def test_skills_csv_flattens_items():
    answer = {"as_of": None, "group_by": ["sex"], "rows": [
        {"sex": "female", "volunteers": 6, "baseline_mean": 1.0, "endline_mean": 2.0, "mean_change": 1.0,
         "items": {"teamwork": {"baseline_mean": 1.5, "endline_mean": 2.5, "mean_change": 1.0}}, "suppressed": False},
        {"sex": "male", "volunteers": None, "baseline_mean": None, "endline_mean": None, "mean_change": None,
         "items": None, "suppressed": True},
    ]}
    rows = list(csv.reader(io.StringIO(formats.to_csv("skills", answer, list(REPORTS["skills"].measures), hxl=True))))
    assert rows[0] == ["sex", "volunteers", "baseline_mean", "endline_mean", "mean_change", "teamwork_baseline_mean",
                       "teamwork_endline_mean", "teamwork_mean_change", "suppressed"]
    assert rows[1][5:8] == ["#indicator+score+baseline+mean+teamwork", "#indicator+score+endline+mean+teamwork",
                            "#indicator+score+change+mean+teamwork"]
    assert rows[2] == ["female", "6", "1.0", "2.0", "1.0", "1.5", "2.5", "1.0", "false"]
    assert rows[3] == ["male", "", "", "", "", "", "", "", "true"]


@pytest.mark.parametrize("group_by", ["province,sex", "age_band,month", "program,week", "district"])
async def test_bitmaps_and_count_distinct_count_the_same_volunteers(world: World, group_by: str):
    """Distinct volunteers counted with a bitmap per group (a few groups) or with count(DISTINCT) (too many
    for bitmaps) give the same cells and slice totals, merges resolved (V5's activities count for V1)."""
    question = figures.parse_question(REPORTS["hours"], [("group_by", group_by), ("status", "all")], national())
    keys = world.store.query("SELECT max(key) FROM volunteer")[0][0]
    answers = []
    for totals in (False, True):
        bitmap, plain = (queries.figures_sql(question, totals, volunteer_keys) for volunteer_keys in (keys, None))
        assert "bitstring_agg" in bitmap.sql and "bitstring_agg" not in plain.sql
        answers.append([queries.figures_of(question, s.columns, world.store.query(s.sql, s.params)) for s in (bitmap, plain)])
    cells, totals = answers
    assert cells[0].rows == cells[1].rows and cells[0].rows
    assert totals[0].slice_totals == totals[1].slice_totals


@pytest.mark.parametrize(("report", "params", "tree"), [
    ("hours", [("group_by", "province,month")], False),
    ("hours", [("group_by", "activity_type,quarter"), ("status", "all")], False),
    ("volunteers", [("group_by", "province,sex,age_band")], False),
    ("beneficiaries", [("group_by", "province"), ("from", "2026-01-01"), ("to", "2026-03-31")], False),
    ("volunteers", [("group_by", "organization,year")], True),
    ("overview", [("group_by", "project")], True),
])
async def test_the_rollups_give_the_rows_answer(world: World, report: str, params: list, tree: bool):
    """A question the rollups cover is read from a table of cells (or of totals, when its groups are the
    table's rows), with the cells and slice totals the activity rows give (merges resolved: V5's
    activities count for V1); for A's tree too when the cells have the organisation (those without it
    leave a tree's questions to the rows)."""
    for caller in (national(), key_of(world.org["A"])):
        question = figures.parse_question(REPORTS[report], params, caller)
        if not caller.national and not tree:
            assert queries.rollup_for(question) is None
            continue
        assert queries.rollup_for(question) is not None
        for totals in (False, True):
            routed, rows = (queries.figures_sql(question, totals, None, rollups) for rollups in (True, False))
            whole = queries.totals_for(question) if not totals else None
            assert f"FROM {whole or 'cells_'}" in routed.sql and "FROM cells_" not in rows.sql
            routed, rows = (queries.figures_of(question, s.columns, world.store.query(s.sql, s.params)) for s in (routed, rows))
            assert routed.rows == rows.rows and routed.slice_totals == rows.slice_totals
            assert rows.rows or totals


def test_days_weeks_and_part_months_are_read_from_the_rows():
    def route(params: list) -> str | None:
        rollup = queries.rollup_for(figures.parse_question(REPORTS["hours"], params, national()))
        return rollup and rollup.name
    assert route([("group_by", "province"), ("from", "2026-02-01"), ("to", "2026-02-28")]) == "cells_province_month"
    assert route([("group_by", "province"), ("quarter", "2026-Q1")]) == "cells_province_month"
    assert route([("group_by", "province"), ("from", "2026-02-02")]) is None
    assert route([("group_by", "province"), ("to", "2026-02-27")]) is None
    assert route([("group_by", "province"), ("week", "2026-W09")]) is None
    assert route([("group_by", "day")]) is None
    assert route([("group_by", "district")]) is None
