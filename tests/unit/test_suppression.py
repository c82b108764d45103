"""Small-cell suppression: hand-worked answers, and no cell recoverable from the totals on random tables."""
from __future__ import annotations

import random
from collections import defaultdict

import pytest

from services.analytics.suppression import suppress

K = 5
MEASURES = ("hours", "activities")


def cell(volunteers: int, hours: float = 10.0, **dims) -> dict:
    return {**dims, "_volunteers": volunteers, "hours": hours, "activities": volunteers}


def hidden(rows: list[dict], dims: list[str]) -> set[tuple]:
    return {tuple(r[d] for d in dims) for r in rows if r["suppressed"]}


def disjoint_totals(cells: list[dict], dims: list[str]) -> dict:
    """Slice totals when no volunteer is in two cells (hand-worked tables): the sum of the slice's cells."""
    totals: dict = {d: defaultdict(int) for d in dims}
    for c in cells:
        for d in dims:
            totals[d][tuple(c[o] for o in dims if o != d)] += c["_volunteers"]
    return totals


def test_no_dimension_only_primary():
    assert suppress([cell(4)], [], K, MEASURES) == [{"hours": None, "activities": None, "suppressed": True}]
    assert suppress([cell(5)], [], K, MEASURES) == [{"hours": 10.0, "activities": 5, "suppressed": False}]


def test_one_dimension_hides_the_smallest_other_cell():
    rows = [cell(10, province="12"), cell(3, province="13"), cell(7, province="14"), cell(6, province="15")]
    out = suppress(rows, ["province"], K, MEASURES, slice_totals={"province": {(): 26}})
    # 13 alone would be the total minus the others; 15 (6 volunteers) is the smallest of the others.
    assert hidden(out, ["province"]) == {("13",), ("15",)}
    assert out[1] == {"province": "13", "hours": None, "activities": None, "suppressed": True}
    assert out[0] == {"province": "12", "hours": 10.0, "activities": 10, "suppressed": False}
    assert all("_volunteers" not in r for r in out)
    assert rows[1]["hours"] == 10.0  # the input is left as it was


def test_two_suppressed_cells_in_one_dimension_need_no_complement():
    rows = [cell(10, province="12"), cell(3, province="13"), cell(4, province="14")]
    out = suppress(rows, ["province"], K, MEASURES, slice_totals={"province": {(): 17}})
    assert hidden(out, ["province"]) == {("13",), ("14",)}


def test_ties_go_to_the_smaller_hours_then_the_lower_code():
    rows = [cell(2, province="11"), cell(6, 30.0, province="12"), cell(6, 20.0, province="14"),
            cell(6, 20.0, province="13")]
    out = suppress(rows, ["province"], K, MEASURES, slice_totals={"province": {(): 20}})
    assert hidden(out, ["province"]) == {("11",), ("13",)}  # 13 and 14 tie on volunteers and hours
    rows[2]["hours"] = 19.5
    out = suppress(rows, ["province"], K, MEASURES, slice_totals={"province": {(): 20}})
    assert hidden(out, ["province"]) == {("11",), ("14",)}


def test_codes_compare_as_numbers_when_they_are_numbers():
    rows = [cell(1, year=2024), cell(6, year=10), cell(6, year=9)]
    out = suppress(rows, ["year"], K, MEASURES, slice_totals={"year": {(): 13}})
    assert hidden(out, ["year"]) == {(2024,), (9,)}


def test_two_dimensions_cascade_over_several_rounds():
    dims = ["province", "band"]
    table = {("A", "x1"): 2, ("A", "x2"): 10, ("A", "x3"): 12,
             ("B", "x1"): 8, ("B", "x2"): 9, ("B", "x3"): 20,
             ("C", "x1"): 15, ("C", "x2"): 6, ("C", "x3"): 7}
    rows = [cell(n, province=p, band=b) for (p, b), n in table.items()]
    out = suppress(rows, dims, K, MEASURES, slice_totals=disjoint_totals(rows, dims))
    # A/x1 is primary. Column x1 then hides B/x1 (8 < 15) and row A hides A/x2 (10 < 12); B/x1 leaves
    # row B with one hidden cell, so B/x2 (9 < 20) goes too: every row and column now hides 0 or 2.
    assert hidden(out, dims) == {("A", "x1"), ("A", "x2"), ("B", "x1"), ("B", "x2")}


def test_three_dimensions_of_two_values_hide_everything_connected():
    dims = ["province", "sex", "band"]
    rows = [cell(3 if (p, s, b) == ("A", "female", "x") else 6 + i, province=p, sex=s, band=b)
            for i, (p, s, b) in enumerate((p, s, b) for p in "AB" for s in ("female", "male") for b in "xy")]
    out = suppress(rows, dims, K, MEASURES, slice_totals=disjoint_totals(rows, dims))
    # Every slice is a pair, so one hidden cell reveals its pair's other cell through every dimension.
    assert hidden(out, dims) == {tuple(r[d] for d in dims) for r in rows}


def test_a_slice_of_one_suppressed_cell_is_left_alone():
    dims = ["province", "sex"]
    table = {("12", "female"): 3,  # province 12 has no other cell: its slice's total is this cell, 3 < k
             ("13", "female"): 2, ("13", "male"): 9, ("13", "other"): 6,
             ("14", "female"): 8, ("14", "male"): 7, ("14", "other"): 6,
             ("15", "female"): 9, ("15", "male"): 8, ("15", "other"): 9}
    rows = [cell(n, province=p, sex=s) for (p, s), n in table.items()]
    totals = disjoint_totals(rows, dims)
    assert totals["sex"][("12",)] == 3
    out = suppress(rows, dims, K, MEASURES, slice_totals=totals)
    # Column female already hides two (12, 13); row 12 needs nothing. Row 13 hides 13/other (6), column
    # other 14/other (6), row 14 14/male (7), column male 15/male (8), row 15 ties 9 and 9: female < other.
    assert hidden(out, dims) == {("12", "female"), ("13", "female"), ("13", "other"), ("14", "other"),
                                 ("14", "male"), ("15", "male"), ("15", "female")}


def test_a_slice_whose_total_is_under_k_is_not_complemented():
    # Not reachable with exact totals (a slice's total is at least its largest cell); the rule still
    # says a total under k protects nothing, since that total is itself hidden one dimension up.
    rows = [cell(3, province="12"), cell(6, province="13")]
    assert hidden(suppress(rows, ["province"], K, MEASURES, slice_totals={"province": {(): 4}}), ["province"]) == {("12",)}


def test_a_missing_slice_total_counts_as_protected():
    rows = [cell(3, province="12"), cell(6, province="13"), cell(8, province="14")]
    assert hidden(suppress(rows, ["province"], K, MEASURES), ["province"]) == {("12",), ("13",)}


def test_unknown_values_are_cells_like_any_other():
    rows = [cell(2, sex=None), cell(9, sex="female"), cell(6, sex="male")]
    out = suppress(rows, ["sex"], K, MEASURES, slice_totals={"sex": {(): 17}})
    assert hidden(out, ["sex"]) == {(None,), ("male",)}
    assert out[0]["sex"] is None and out[0]["suppressed"]


def test_the_volunteer_count_stays_when_it_is_a_measure():
    rows = [cell(3, province="12"), cell(6, province="13"), cell(8, province="14")]
    for r in rows:
        r["volunteers"] = r.pop("_volunteers")
    out = suppress(rows, ["province"], K, ("volunteers",), volunteers_key="volunteers",
                   slice_totals={"province": {(): 17}}, tie_key=None)
    assert [r["volunteers"] for r in out] == [None, None, 8]


# --- random tables: nothing can be read off as a slice total minus its other cells --------------------


def random_answer(rng: random.Random, n_dims: int) -> tuple[list[dict], list[str], dict]:
    """Cells and slice totals computed as the SQL does: from activities, counting volunteers distinct."""
    dims = [f"d{j}" for j in range(n_dims)]
    values = {d: rng.sample(["a", "b", "c", "d", None], rng.randint(1, 4)) for d in dims}
    members: dict[tuple, set[int]] = defaultdict(set)
    hours: dict[tuple, float] = defaultdict(float)
    for volunteer in range(rng.randint(1, 80)):
        for _ in range(rng.randint(1, 4)):  # a volunteer's activities can fall in several cells
            key = tuple(rng.choice(values[d]) for d in dims)
            members[key].add(volunteer)
            hours[key] += rng.choice([0.5, 1.0, 2.0, 3.0])
    rows = [{**dict(zip(dims, key)), "_volunteers": len(who), "hours": hours[key], "activities": len(who)}
            for key, who in members.items()]
    totals: dict = {}
    for j, d in enumerate(dims):
        by_slice: dict[tuple, set[int]] = defaultdict(set)
        for key, who in members.items():
            by_slice[key[:j] + key[j + 1:]] |= who
        totals[d] = {s: len(who) for s, who in by_slice.items()}
    return rows, dims, totals


def assert_nothing_recoverable(rows: list[dict], out: list[dict], dims: list[str], totals: dict, k: int) -> None:
    for before, after in zip(rows, out):
        assert all(after[d] == before[d] for d in dims)
        assert "_volunteers" not in after
        if before["_volunteers"] < k:
            assert after["suppressed"], "primary"
        if after["suppressed"]:
            assert after["hours"] is None and after["activities"] is None
        else:
            assert after["hours"] == before["hours"]
    for d in dims:
        hidden_in: dict[tuple, int] = defaultdict(int)
        cells_in: dict[tuple, int] = defaultdict(int)
        for r in out:
            key = tuple(r[o] for o in dims if o != d)
            hidden_in[key] += r["suppressed"]
            cells_in[key] += 1
        for key, count in hidden_in.items():
            # A slice of one cell is that cell: nothing to subtract (whether its total shows is the
            # business of the answer one dimension fewer; see the module docstring of suppression).
            if totals[d][key] >= k and cells_in[key] > 1:
                assert count != 1, f"slice {d} at {key}: its one hidden cell is the total minus the others"


@pytest.mark.parametrize("seed", range(6))
def test_random_tables_leave_no_slice_with_one_hidden_cell(seed):
    rng = random.Random(seed)
    for _ in range(150):
        rows, dims, totals = random_answer(rng, rng.randint(1, 4))
        k = rng.randint(2, 8)
        out = suppress(rows, dims, k, MEASURES, slice_totals=totals)
        assert_nothing_recoverable(rows, out, dims, totals, k)
        shuffled = rows[:]
        rng.shuffle(shuffled)  # the outcome depends on the figures, not on the rows' order
        again = suppress(shuffled, dims, k, MEASURES, slice_totals=totals)
        assert hidden(again, dims) == hidden(out, dims)


def test_the_checker_catches_a_recoverable_cell():
    rows = [cell(3, province="12"), cell(6, province="13"), cell(8, province="14")]
    only_primary = suppress(rows, ["province"], K, MEASURES, slice_totals={"province": {(): 4}})
    with pytest.raises(AssertionError, match="total minus the others"):
        assert_nothing_recoverable(rows, only_primary, ["province"], {"province": {(): 17}}, K)
