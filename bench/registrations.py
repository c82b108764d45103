"""Volunteer registrations per second through the gateway: single requests, 32 concurrent clients.

PostgreSQL and SQLite side by side, each on a fresh stack: one `POST /volunteers` per request, each
committing the volunteer and its outbox row (the event is published after, off the request path).
"""
from __future__ import annotations

import secrets

from bench.load import Load, run_load
from bench.payloads import volunteer_template
from bench.stack import DATABASES, gateway_headers, running_stack, settle
from bench.stats import figure

SECONDS = 10
WARMUP_SECONDS = 1
CLIENTS = 32


def run(quick: bool = False) -> dict[str, float]:
    seconds = 2 if quick else SECONDS
    figures: dict[str, float] = {}
    for database in DATABASES:
        with running_stack(database) as stack:
            body = volunteer_template(secrets.token_hex(3))
            headers = {**gateway_headers(stack), "Content-Type": "application/json"}
            for first, duration in ((0, WARMUP_SECONDS), (1_000_000, seconds)):  # the warm-up, then the figures
                settle(stack)
                result = run_load(Load(stack.api + "/volunteers", CLIENTS, duration, "POST", headers, body, first))
                if result.failures:
                    raise RuntimeError(f"registrations on {database}: {result.failures} failed requests, "
                                       f"the first: {result.first_failure}")
            figures[figure(database, "registrations/s")] = round(result.rps)
            figures[figure(database, "p50 ms")] = round(result.p50_ms, 2)
            figures[figure(database, "p99 ms")] = round(result.p99_ms, 2)
    return figures
