"""Volunteer registrations per second through the gateway: single requests, 32 concurrent clients.

PostgreSQL and SQLite side by side, each on a fresh stack: one `POST /volunteers` per request, each
committing the volunteer and its outbox row (the event is published after, off the request path).
Below each, the machine's ceiling (bench.ceiling): the same rows and outbox rows, one raw transaction
each at 32 concurrent tasks, in a fresh database with the registry's migrations.
"""
from __future__ import annotations

import secrets

from bench import ceiling
from bench.load import Load, run_load
from bench.payloads import registered_volunteers, volunteer_template
from bench.stack import DATABASES, gateway_headers, probed, running_stack
from services.registry.migrations import MIGRATIONS
from services.registry.volunteers.models import Volunteer

SECONDS = 10
WARMUP_SECONDS = 1
CLIENTS = 32


def run(quick: bool = False) -> dict[str, float]:
    seconds = 2 if quick else SECONDS
    figures: dict[str, float] = {}
    for database in DATABASES:
        with running_stack(database) as stack:
            tag = secrets.token_hex(3)
            body = volunteer_template(tag)
            headers = {**gateway_headers(stack), "Content-Type": "application/json"}
            for first, duration in ((0, WARMUP_SECONDS), (1_000_000, seconds)):  # the warm-up, then the figures
                result, probe = probed(stack, lambda: run_load(
                    Load(stack.api + "/volunteers", CLIENTS, duration, "POST", headers, body, first)))
                if result.failures:
                    raise RuntimeError(f"registrations on {database}: {result.failures} failed requests, "
                                       f"the first: {result.first_failure}")
            # The machine's ceiling: the same rows and outbox rows, one raw transaction each, 32 at a time.
            url = ceiling.fresh_database(stack, "ceiling", MIGRATIONS)
            rows, events = registered_volunteers(tag, 2_000_000, ceiling.rows_for(seconds))
            raw, raw_probe = probed(stack, lambda: ceiling.singles(url, Volunteer.__table__, rows, events, CLIENTS, seconds))
            figures |= ceiling.side_by_side(database, "registrations/s", result, probe, raw, raw_probe, ceiling.method(url, bulk=False))
    return figures
