"""The Python load generator (used when wrk is not installed): `python -m bench.pyload < spec.json`.

N keep-alive connections, each looping request → response until the time is up; prints a JSON
LoadResult. It runs in its own process so its CPU use is not charged to the harness.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

from bench.load import body_templates
from bench.stats import percentile


async def generate(spec: dict) -> dict:
    connections, seconds, method, url = spec["connections"], spec["seconds"], spec["method"], spec["url"]
    templates = body_templates(spec.get("body"))
    counter = [int(spec.get("first", 0))]
    expect: int | None = spec.get("expect")
    latencies: list[float] = []
    failures = 0
    first_failure = ""

    def next_body() -> bytes | None:
        if not templates:
            return None
        counter[0] += 1
        return templates[counter[0] % len(templates)].replace("{n}", f"{counter[0]:08d}").encode()

    async def client(session: aiohttp.ClientSession, deadline: float) -> None:
        nonlocal failures, first_failure
        while (start := time.perf_counter()) < deadline:
            try:
                async with session.request(method, url, data=next_body(), headers=spec["headers"]) as response:
                    answer = await response.read()
                    if response.status != expect if expect is not None else response.status >= 400:
                        failures += 1
                        first_failure = first_failure or f"{response.status} {answer[:300].decode(errors='replace')}"
            except aiohttp.ClientError as exc:
                failures += 1
                first_failure = first_failure or repr(exc)
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as session:
        began = time.perf_counter()
        deadline = began + seconds
        await asyncio.gather(*(client(session, deadline) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "failures": failures,
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else 0.0,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else 0.0,
        "first_failure": first_failure,
    }


def main() -> None:
    spec = json.load(sys.stdin)
    try:
        from uvloop import run
    except ImportError:  # the standard loop works, only slower
        run = asyncio.run
    print(json.dumps(run(generate(spec))))


if __name__ == "__main__":
    main()
