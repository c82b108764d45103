"""The harness's pure parts: percentiles, the printed table, and merging figures into results.json.

A benchmark returns flat figures `{name: value}`. A name `"<row> | <column>"` puts the value in a
side-by-side table (rows in first-seen order, columns likewise); a name without ` | ` goes to a row
named after the benchmark.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

SEPARATOR = " | "


def figure(row: str, column: str) -> str:
    """The name of the figure shown at (row, column) of a benchmark's table."""
    return f"{row}{SEPARATOR}{column}"


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0-100, not {p}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def format_value(value: object) -> str:
    """Three significant figures for small numbers, whole numbers with separators from 1,000 up."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.3f}"


def pivot(name: str, figures: dict[str, object]) -> tuple[list[str], list[str], dict[tuple[str, str], object]]:
    """(rows, columns, cells) of a benchmark's figures."""
    rows: list[str] = []
    columns: list[str] = []
    cells: dict[tuple[str, str], object] = {}
    for key, value in figures.items():
        row, column = key.split(SEPARATOR, 1) if SEPARATOR in key else (name, key)
        if row not in rows:
            rows.append(row)
        if column not in columns:
            columns.append(column)
        cells[(row, column)] = value
    return rows, columns, cells


def format_table(name: str, figures: dict[str, object]) -> str:
    """A benchmark's figures as a Markdown table (readable in a terminal, pasteable into the README)."""
    rows, columns, cells = pivot(name, figures)
    header = [name, *columns]
    body = [[row, *(format_value(cells[(row, c)]) if (row, c) in cells else "" for c in columns)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells_: list[str]) -> str:
        first, *rest = cells_
        return "| " + " | ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:]))]) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2), *("-" * (w + 1) + ":" for w in widths[1:])]) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def merge_results(existing: dict, name: str, figures: dict[str, object], machine: dict, run: dict) -> dict:
    """results.json after a run of benchmark `name`.

    `run` says when and in what conditions it ran (`date`, `machine_busy_before`, `cpu_probe_us`); `date` at the top
    is the latest run. Figures measured on another machine are dropped rather than mixed into one table.
    """
    same_machine = existing.get("machine") == machine
    merged = {key: value for key, value in existing.items() if same_machine and key not in METADATA}
    runs = dict(existing.get("runs", {})) if same_machine else {}
    merged[name] = figures
    runs[name] = run
    return {"machine": machine, "date": run["date"], "runs": dict(sorted(runs.items())), **dict(sorted(merged.items()))}


METADATA = ("machine", "date", "runs")
