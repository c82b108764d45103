"""`python -m bench [name ...]`: run benchmarks, print their tables, merge figures into bench/results.json."""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import gateway_overhead, registrations, volunteer_import
from bench.stack import machine, machine_busy
from bench.stats import format_table, merge_results

BENCHMARKS = {
    "gateway_overhead": gateway_overhead.run,
    "registrations": registrations.run,
    "volunteer_import": volunteer_import.run,
}
RESULTS = Path(__file__).with_name("results.json")
BUSY_WARNING = 0.15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--no-save", action="store_true", help="print the figures without writing results.json")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    where = machine()
    print(f"machine: {where['cpus']} × {where['cpu']}, {where['memory_gib']} GiB; load: {where['load_generator']}"
          " (on the same cores as the servers)", flush=True)
    for name in args.names or BENCHMARKS:
        began = time.monotonic()
        print(f"\n{name}: {sys.modules[BENCHMARKS[name].__module__].__doc__.splitlines()[0]}", flush=True)
        busy = machine_busy()
        if busy > BUSY_WARNING:
            print(f"warning: the machine is {busy:.0%} busy before the benchmark starts: figures will be low and noisy", flush=True)
        figures = BENCHMARKS[name]()
        print(format_table(name, figures))
        print(f"({time.monotonic() - began:.0f} s)", flush=True)
        if not args.no_save:
            existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
            RESULTS.write_text(json.dumps(merge_results(existing, name, figures, where, date), indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
