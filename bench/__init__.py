"""Reproducible benchmarks of the running system: `make bench` (all) or `make bench BENCH=<name>`."""
