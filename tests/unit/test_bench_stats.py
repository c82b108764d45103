"""The benchmark harness's pure parts: percentiles, tables, results.json merging, wrk's script and output."""
from __future__ import annotations

import csv
import io
import json

import pytest

from bench.__main__ import show
from bench.load import Load, LoadResult, parse_wrk, wrk_script
from bench.payloads import IMPORT_COLUMNS, fill, volunteer_csv, volunteer_template
from bench.stats import figure, format_table, format_value, merge_results, percentile
from services.registry.normalize import normalize_phone

MACHINE = {"cpus": 2, "cpu": "AMD EPYC", "memory_gib": 23.5}


def test_percentile_interpolates_between_ranks():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 25) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_of_one_value_and_bad_input():
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(12345.6, "12,346"), (123.4, "123"), (12.34, "12.3"), (1.234, "1.23"), (0.0456, "0.046"), (0, "0.00"),
     (-0.25, "-0.250"), ("skipped", "skipped")],
)
def test_format_value(value, shown):
    assert format_value(value) == shown


def test_table_puts_row_and_column_figures_side_by_side():
    figures = {
        figure("read, 1 client", "direct rps"): 2000,
        figure("read, 1 client", "gateway rps"): 1500,
        figure("write, 32 clients", "direct rps"): 900,
        figure("write, 32 clients", "gateway rps"): 800,
        figure("write, 32 clients", "added p50 ms"): 0.21,
    }
    lines = format_table("gateway_overhead", figures).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["gateway_overhead", "direct rps", "gateway rps", "added p50 ms"]
    assert lines[1].startswith("|---") and lines[1].endswith(":|")
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["read, 1 client", "2,000", "1,500", ""]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["write, 32 clients", "900", "800", "0.210"]
    assert len({len(line) for line in lines}) == 1  # columns aligned


def test_table_of_plain_figures_is_one_row_named_after_the_benchmark():
    lines = format_table("rebuild", {"messages/s": 33000, "seconds": 30.3}).splitlines()
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["rebuild", "33,000", "30.3"]


def run_at(date: str) -> dict:
    return {"date": date, "machine_busy_before": 0.02}


def test_merge_keeps_other_benchmarks_of_the_same_machine():
    first = merge_results({}, "registrations", {"postgresql | registrations/s": 700}, MACHINE, run_at("2026-03-01T10:00Z"))
    second = merge_results(first, "gateway_overhead", {"added p50 ms": 0.2}, MACHINE, run_at("2026-03-02T10:00Z"))
    assert second["registrations"] == {"postgresql | registrations/s": 700}
    assert second["gateway_overhead"] == {"added p50 ms": 0.2}
    assert second["date"] == "2026-03-02T10:00Z"
    assert second["runs"] == {"gateway_overhead": run_at("2026-03-02T10:00Z"), "registrations": run_at("2026-03-01T10:00Z")}
    assert second["machine"] == MACHINE


def test_merge_replaces_a_benchmarks_figures_when_it_runs_again():
    first = merge_results({}, "registrations", {"a": 1, "b": 2}, MACHINE, run_at("2026-03-01T10:00Z"))
    again = merge_results(first, "registrations", {"a": 3}, MACHINE, run_at("2026-03-02T10:00Z"))
    assert again["registrations"] == {"a": 3} and again["runs"]["registrations"]["date"] == "2026-03-02T10:00Z"


def test_merge_drops_figures_from_another_machine():
    old = merge_results({}, "registrations", {"x": 1}, {**MACHINE, "cpus": 8}, run_at("2026-03-01T10:00Z"))
    new = merge_results(old, "gateway_overhead", {"y": 2}, MACHINE, run_at("2026-03-02T10:00Z"))
    assert "registrations" not in new and list(new["runs"]) == ["gateway_overhead"]


def test_wrk_script_sets_headers_and_numbers_each_body():
    script = wrk_script(Load("http://h/api/v1/volunteers", 32, 5, "POST", {"Authorization": "Bearer k"}, '{"phone": "+8551{n}"}', 3))
    assert "wrk.method = [==[POST]==]" in script
    assert "wrk.headers[ [==[Authorization]==] ] = [==[Bearer k]==]" in script  # `[[` would open a Lua string
    assert "local counter = 3" in script and "request = function()" in script
    static = wrk_script(Load("http://h/x", 1, 5))
    assert "request = function()" not in static and "done = function" in static
    assert "if status >= 400 then" in static  # by default any answer from 400 is a failure


def test_wrk_script_counts_answers_other_than_the_expected_status_as_failures():
    script = wrk_script(Load("http://h/api/v1/volunteers", 1, 5, "POST", {}, '{"sex": "female"}', expect=422))
    assert "if status ~= 422 then" in script and "status >= 400" not in script
    assert 'wrong = wrong + thread:get("unexpected")' in script


def test_parse_wrk_reads_the_result_line():
    output = "Running 5s test @ http://h\n  1 threads\nBENCH-RESULT 10000 5000000 3 450 2100\n"
    result = parse_wrk(output)
    assert result == LoadResult(requests=10000, seconds=5.0, failures=3, p50_ms=0.45, p99_ms=2.1)
    assert result.first_failure == ""
    assert result.rps == 2000
    with pytest.raises(RuntimeError):
        parse_wrk("Running 5s test\n")


def test_parse_wrk_says_what_the_first_failure_was():
    answered = parse_wrk("BENCH-RESULT 10 1000000 2 450 2100\nBENCH-FAILURE 429 {\"status\":429}\n"
                         "BENCH-SOCKET-ERRORS connect 0, read 0, write 0, timeout 0\n")
    assert answered.failures == 2 and answered.first_failure == '429 {"status":429}'
    timed_out = parse_wrk("BENCH-RESULT 10 1000000 1 450 2100\nBENCH-SOCKET-ERRORS connect 0, read 0, write 0, timeout 1\n")
    assert timed_out.first_failure == "connect 0, read 0, write 0, timeout 1"


def test_volunteer_bodies_differ_per_request_and_keep_a_valid_phone():
    template = volunteer_template("abc")
    first, last = json.loads(fill(template, 1)), json.loads(fill(template, 99_999_999))
    assert first["phone"] != last["phone"] and first["email"] != last["email"]
    assert normalize_phone(first["phone"]) == "+855100000001"
    assert normalize_phone(last["phone"]) == "+855199999999"


def test_import_file_has_the_contract_header_and_distinct_valid_rows():
    rows = list(csv.DictReader(io.StringIO(volunteer_csv(1000, "abc").decode())))
    assert len(rows) == 1000 and list(rows[0]) == IMPORT_COLUMNS
    phones = {normalize_phone(row["phone"]) for row in rows}
    assert len(phones) == 1000 and len({row["external_id"] for row in rows}) == 1000
    minors = [row for row in rows if row["guardian_name"]]
    assert minors and all(row["guardian_relation"] for row in minors)


def test_show_renders_the_results_file_for_the_readme():
    results = merge_results({}, "registrations", {figure("postgresql", "registrations/s"): 700}, MACHINE, run_at("2026-03-01T10:00Z"))
    shown = show({**results, "machine": {**MACHINE, "os": "Linux", "python": "3.11", "postgresql": "15", "sqlite": "3.40",
                                         "load_generator": "wrk"}})
    assert "2 × AMD EPYC" in shown and "registrations (2026-03-01T10:00Z; machine 2% busy before)" in shown
    assert "| postgresql    |             700 |" in shown


def test_show_gives_the_cpu_probe_of_runs_that_measured_it():
    results = merge_results({}, "registrations", {figure("postgresql", "registrations/s"): 700}, MACHINE,
                            {**run_at("2026-03-01T10:00Z"), "cpu_probe_us": 2950.0})
    shown = show({**results, "machine": {**MACHINE, "os": "Linux", "python": "3.11", "postgresql": "15", "sqlite": "3.40",
                                         "load_generator": "wrk"}})
    assert "registrations (2026-03-01T10:00Z; machine 2% busy before; cpu probe 2950 µs)" in shown

