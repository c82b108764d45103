"""Small-cell suppression of an analytics answer: primary (fewer than k volunteers) and complementary.

`suppress(rows, dims, k, measures, volunteers_key="_volunteers", slice_totals=None, tie_key="hours")`
is pure: no I/O, the input rows are not modified.

- `rows`: the answer's cells, one dict per group, holding each dimension of `dims` (its value may be
  None: "unknown"), the `measures`, and `volunteers_key`: the exact number of distinct volunteers the
  cell is built from (always > 0: a group of no volunteer is not a row).
- `dims`: the answer's dimensions, in `group_by` order.
- `slice_totals`: for each dimension `d` of `dims`, a mapping from the tuple of the OTHER dimensions'
  values (in `dims` order, `d` left out) to the distinct volunteers of that slice, i.e. of the answer one
  dimension fewer. The caller gets it with one `GROUP BY <dims without d>` per dimension, counting
  `count(DISTINCT volunteer)` under the same filters. With one dimension the only key is `()` and its
  value is the answer's overall distinct volunteers. It cannot be derived from the cells: one volunteer
  can be in several cells of a slice. A slice missing from `slice_totals` (or `slice_totals=None`) is
  taken to have at least k volunteers, i.e. protected: a caller's omission over-suppresses, never leaks.
- `tie_key`: the measure that breaks ties between candidates of equal volunteers (the smaller first);
  a row without it counts as 0.

Returns new rows in the input order, each with `"suppressed"` (True or False). A suppressed row keeps
its dimension values and has every measure None. `volunteers_key` is dropped from every row (unless it
is also one of `measures`): the count that decided suppression must not leave the service.

Primary: a row from fewer than k volunteers is suppressed. Complementary: in every slice (all
dimensions fixed but one) holding exactly one suppressed cell while the slice's total comes from at
least k volunteers, the lone hidden cell would be the total minus the other cells; so the slice's
unsuppressed cell with the fewest volunteers is suppressed too (ties: the smaller `tie_key`, then the
lower code of the varying dimension), and this repeats until no such slice is left. With no dimension
only primary applies (the single row is the total). A slice whose total is below k is left alone: that
total is itself suppressed in the answer one dimension fewer, so nothing can be subtracted from it.

The rule's limit: a cell alone in a slice IS that slice's total, so when complementary suppression hides
such a cell (for another slice's sake) its figure can still be read from the answer one dimension fewer.
This happens with nested dimensions (a district lies in one province; most projects in one province):
hiding protects the small cell only against someone who does not also ask that other answer.
"""
from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SliceKey = tuple[Any, ...]


def _code_key(value: Any) -> tuple:
    """Orders dimension values of mixed kinds: unknown first, then numbers by value, then text-like by text."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, bool):  # a bool is an int to Python; it is not a number here
        return (2, 0, str(value))
    if isinstance(value, int | float):
        return (1, value, "")
    return (2, 0, str(value))


def suppress(
    rows: Iterable[Mapping[str, Any]],
    dims: Sequence[str],
    k: int,
    measures: Sequence[str],
    volunteers_key: str = "_volunteers",
    slice_totals: Mapping[str, Mapping[SliceKey, int]] | None = None,
    tie_key: str | None = "hours",
) -> list[dict[str, Any]]:
    """The answer with small cells hidden (see the module docstring for the arguments and the rule)."""
    cells = list(rows)
    volunteers = [cell[volunteers_key] for cell in cells]
    hidden = {i for i, count in enumerate(volunteers) if count < k}

    if dims and hidden:
        _complement(cells, list(dims), k, volunteers, hidden, slice_totals or {}, tie_key)

    out = []
    for i, cell in enumerate(cells):
        row = {key: value for key, value in cell.items() if key != volunteers_key or key in measures}
        if i in hidden:
            row.update(dict.fromkeys(measures))
        row["suppressed"] = i in hidden
        out.append(row)
    return out


def _complement(cells, dims, k, volunteers, hidden, slice_totals, tie_key) -> None:
    """Adds to `hidden` until no slice with a total of at least k has exactly one hidden cell."""
    # A slice is (varying dimension's index, the other dimensions' values); each cell is in one slice per dimension.
    members: dict[tuple[int, SliceKey], list[int]] = defaultdict(list)
    slices_of: list[list[tuple[int, SliceKey]]] = []
    for i, cell in enumerate(cells):
        values = tuple(cell[d] for d in dims)
        own = [(j, values[:j] + values[j + 1:]) for j in range(len(dims))]
        for s in own:
            members[s].append(i)
        slices_of.append(own)

    def protected(s: tuple[int, SliceKey]) -> bool:
        total = slice_totals.get(dims[s[0]], {}).get(s[1])
        return total is None or total >= k

    def candidate_order(j: int):
        return lambda i: (volunteers[i], (cells[i].get(tie_key) or 0) if tie_key else 0, _code_key(cells[i][dims[j]]))

    # Sorted start, so the outcome depends on the figures, not on the order the rows came in.
    queue = deque(sorted(members, key=lambda s: (s[0], tuple(_code_key(v) for v in s[1]))))
    queued = set(queue)
    while queue:
        s = queue.popleft()
        queued.discard(s)
        inside = members[s]
        if sum(1 for i in inside if i in hidden) != 1 or not protected(s):
            continue
        shown = [i for i in inside if i not in hidden]
        if not shown:  # the lone cell is the whole slice: the total is that cell, itself under k
            continue
        victim = min(shown, key=candidate_order(s[0]))
        hidden.add(victim)
        # Only the slices through the newly hidden cell can have changed.
        for other in slices_of[victim]:
            if other not in queued:
                queue.append(other)
                queued.add(other)
