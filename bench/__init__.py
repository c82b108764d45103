"""Reproducible benchmarks of the running system: `make bench` (all) or `make bench BENCH=<name>`.

Run from the repository root: the harness starts stacks with the test harness (`tests/harness.py`).
Each benchmark module has a docstring and `run(quick) -> {figure: value}`; `python -m bench --show`
prints bench/results.json as the README's tables. wrk (`apt-get install wrk`) is used when installed.
"""
