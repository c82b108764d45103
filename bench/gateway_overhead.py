"""What the gateway adds (auth + rate limit + proxy) against calling the service directly, on PostgreSQL.

Two routes: (a) a cheap read, `GET /organizations/{id}` (one primary-key lookup: there is no
API route without a database), and (b) a database write, volunteer registration (one insert with
its outbox row). Each at 1 and at 32 concurrent clients, direct then through the gateway, back to
back in one run. Targets (issue 5): added p50 at 1 client ≤ 0.3 ms; through the gateway on the
write route at 32 clients ≥ 0.8 × the direct throughput.
"""
from __future__ import annotations

import secrets

from bench.load import Load, LoadResult, run_load
from bench.payloads import volunteer_template
from bench.stack import cpu_seconds, direct_headers, gateway_headers, running_stack, settle
from bench.stats import figure
from services.registry.settings import GDY_ORGANIZATION_ID

SECONDS = 8
WARMUP_SECONDS = 1
CLIENTS = (1, 32)
JSON = {"Content-Type": "application/json"}


def routes(run: str) -> list[tuple[str, str, str, str | None]]:
    """(label, method, path under /api/v1, body template)."""
    return [
        ("read", "GET", f"/organizations/{GDY_ORGANIZATION_ID}", None),
        ("write", "POST", "/volunteers", volunteer_template(run)),
    ]


def run(seconds: float = SECONDS) -> dict[str, float]:
    figures: dict[str, float] = {}
    run_id = secrets.token_hex(3)
    with running_stack("postgresql") as stack:
        bases = {"direct": stack.urls["registry"] + "/api/v1", "gateway": stack.api}
        first = 0
        for label, method, path, body in routes(run_id):
            for clients in CLIENTS:
                results: dict[str, LoadResult] = {}
                cpu: dict[str, dict[str, float]] = {}
                for via, base in bases.items():
                    for duration in (WARMUP_SECONDS, seconds):
                        # Direct callers carry the signed context the gateway would add (valid 60 s).
                        headers = direct_headers(stack) if via == "direct" else gateway_headers(stack)
                        load = Load(base + path, clients, duration, method, {**headers, **(JSON if body else {})}, body, first)
                        first += 1_000_000  # a run sends far fewer requests: bodies stay unique
                        settle(stack)
                        cpu_before = {name: cpu_seconds(stack, name) for name in ("registry", "gateway")}
                        results[via] = run_load(load)
                        cpu[via] = {name: cpu_seconds(stack, name) - cpu_before[name] for name in cpu_before}
                    if results[via].failures:
                        raise RuntimeError(f"{label} {via} at {clients} clients: {results[via].failures} failed requests")
                figures.update(compare(f"{label}, {clients} client{'s' if clients > 1 else ''}", results, cpu))
    return figures


def compare(row: str, results: dict[str, LoadResult], cpu: dict[str, dict[str, float]]) -> dict[str, float]:
    direct, gateway = results["direct"], results["gateway"]
    return {
        figure(row, "direct rps"): round(direct.rps),
        figure(row, "gateway rps"): round(gateway.rps),
        figure(row, "throughput ratio"): round(gateway.rps / direct.rps, 3),
        figure(row, "direct p50 ms"): round(direct.p50_ms, 3),
        figure(row, "gateway p50 ms"): round(gateway.p50_ms, 3),
        figure(row, "added p50 ms"): round(gateway.p50_ms - direct.p50_ms, 3),
        figure(row, "direct p99 ms"): round(direct.p99_ms, 3),
        figure(row, "gateway p99 ms"): round(gateway.p99_ms, 3),
        figure(row, "added p99 ms"): round(gateway.p99_ms - direct.p99_ms, 3),
        # CPU time per request does not depend on what else the machine runs: it says where time goes.
        figure(row, "service CPU ms/req"): round(cpu["direct"]["registry"] * 1000 / direct.requests, 3),
        figure(row, "gateway CPU ms/req"): round(cpu["gateway"]["gateway"] * 1000 / gateway.requests, 3),
    }
