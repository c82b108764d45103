"""`python -m bench [name ...]`: run benchmarks, print their tables, merge figures into bench/results.json."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import activities, analytics, gateway_instructions, gateway_overhead, registrations, volunteer_import
from bench.stack import cpu_speed, machine, machine_busy
from bench.stats import METADATA, format_table, merge_results

# name → module with a docstring and `run(quick) -> {figure: value}`
BENCHMARKS = {module.__name__.rsplit(".", 1)[1]: module for module in (gateway_overhead, gateway_instructions, registrations, volunteer_import, activities, analytics)}
RESULTS = Path(__file__).with_name("results.json")
BUSY_WARNING = 0.15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--no-save", action="store_true", help="print the figures without writing results.json")
    parser.add_argument("--quick", action="store_true", help="short runs to check that everything works (not saved)")
    parser.add_argument("--analytics-size", choices=sorted(analytics.SIZES), default=analytics.DEFAULT_SIZE,
                        help="analytics: 1m activities (default, a shared machine) or 10m (the issue's size, a quiet machine)")
    parser.add_argument("--show", action="store_true", help="print results.json as Markdown tables (for the README); run nothing")
    args = parser.parse_args(argv)
    if args.show:
        print(show(json.loads(RESULTS.read_text())))
        return 0
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    where = machine()
    print(f"machine: {where['cpus']} × {where['cpu']}, {where['memory_gib']} GiB; load: {where['load_generator']}"
          " (on the same cores as the servers)", flush=True)
    for name in args.names or BENCHMARKS:
        began = time.monotonic()
        print(f"\n{name}: {BENCHMARKS[name].__doc__.splitlines()[0]}", flush=True)
        busy = machine_busy()
        if busy > BUSY_WARNING:
            print(f"warning: the machine is {busy:.0%} busy before the benchmark starts: figures will be low and noisy", flush=True)
        speed = cpu_speed()
        print(f"cpu probe: {speed:.0f} µs for a fixed Python loop (lower is faster; compare runs at similar figures)", flush=True)
        options = {"size": args.analytics_size} if name == "analytics" else {}
        figures = BENCHMARKS[name].run(quick=args.quick, **options)
        print(format_table(name, figures))
        print(f"({time.monotonic() - began:.0f} s)", flush=True)
        if not (args.no_save or args.quick):
            existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            run = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"), "machine_busy_before": round(busy, 2),
                   "cpu_probe_us": speed}
            RESULTS.write_text(json.dumps(merge_results(existing, name, figures, where, run), indent=2, ensure_ascii=False) + "\n")
    return 0


def show(results: dict) -> str:
    where = results["machine"]
    lines = [f"Measured on {where['cpus']} × {where['cpu']}, {where['memory_gib']} GiB, {where['os']}, Python {where['python']}, "
             f"PostgreSQL {where['postgresql']}, SQLite {where['sqlite']}; load from {where['load_generator']} on the same machine."]
    for name, figures in results.items():
        if name not in METADATA:
            run = results["runs"].get(name, {})
            probe = f"; cpu probe {run['cpu_probe_us']:.0f} µs" if "cpu_probe_us" in run else ""
            lines += ["", f"{name} ({run.get('date', '?')}; machine {run.get('machine_busy_before', 0):.0%} busy before{probe})", "",
                      format_table(name, figures)]
    return "\n".join(lines)


def _stop_on_sigterm(signum, frame) -> None:
    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the stack's processes are stopped and
    # its databases dropped instead of being left running and loading the machine.
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sys.exit(main())
