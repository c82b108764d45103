"""Load generators: wrk when installed (C, light on the CPU), else a Python one in its own process.

The machine has few cores and the servers need them: the generator always runs as a separate
process, never inside the harness's or a server's event loop. wrk costs far less CPU per request
than any Python client, so figures taken with it are closer to what the servers can do; the
generator used is written into results.json.

Bodies are templates: each `{n}` becomes a per-request number (8 digits, unique within a run from
`first`), so write benchmarks never send the same phone number or external id twice. A list of
templates is taken in turn (request n gets template n mod their number): requests that must name
different existing things (a volunteer, a date) to stay valid.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Load:
    url: str
    connections: int
    seconds: float
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | list[str] | None = None  # a template (`{n}` → per-request number), or templates in turn
    first: int = 0
    expect: int | None = None  # the one status every answer must have (default: any below 400)


@dataclass
class LoadResult:
    requests: int
    seconds: float
    failures: int  # non-2xx/3xx answers plus socket errors and timeouts
    p50_ms: float
    p99_ms: float
    first_failure: str = ""  # what the first failed answer said, if any

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def generator_name() -> str:
    if os.environ.get("VMC_BENCH_LOAD") != "python" and shutil.which("wrk"):
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        return (out.stdout or out.stderr).split("Copyright")[0].strip() or "wrk"
    return "python aiohttp (bench.pyload)"


def body_templates(body: str | list[str] | None) -> list[str]:
    """A Load's body as the list of templates taken in turn (none for a request without a body)."""
    return body if isinstance(body, list) else [body] if body is not None else []


def run_load(load: Load) -> LoadResult:
    if os.environ.get("VMC_BENCH_LOAD") != "python" and shutil.which("wrk"):
        return _run_wrk(load)
    return _run_python(load)


def _lua_string(value: str) -> str:
    if "]==]" in value:
        raise ValueError("value cannot be quoted as a Lua long string")
    return f"[==[{value}]==]"


def wrk_script(load: Load) -> str:
    """The Lua script giving wrk the method, headers and per-request body, and printing JSON at the end."""
    lines = [f"wrk.method = {_lua_string(load.method)}"]
    lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in load.headers.items()]
    templates = body_templates(load.body)
    if any("{n}" in template for template in templates) or len(templates) > 1:
        lines += [
            f"local counter = {int(load.first)}",
            f"local templates = {{ {', '.join(_lua_string(t) for t in templates)} }}",
            "request = function()",
            "  counter = counter + 1",
            '  local body = templates[counter % #templates + 1]:gsub("{n}", string.format("%08d", counter))',
            "  return wrk.format(nil, nil, nil, body)",
            "end",
        ]
    elif templates:
        lines.append(f"wrk.body = {_lua_string(templates[0])}")
    unexpected = "status >= 400" if load.expect is None else f"status ~= {int(load.expect)}"
    lines += [
        # Answers with an unexpected status are counted per thread (wrk's own count is of every
        # status from 400); only the first is kept, to say what went wrong.
        "threads = {}",
        "unexpected = 0",
        "setup = function(thread) table.insert(threads, thread) end",
        "response = function(status, headers, body)",
        f"  if {unexpected} then",
        "    unexpected = unexpected + 1",
        '    if first_failure == nil then first_failure = status .. " " .. (body or ""):sub(1, 300) end',
        "  end",
        "end",
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        "  local wrong = 0",
        '  for _, thread in ipairs(threads) do wrong = wrong + thread:get("unexpected") end',
        '  io.write(string.format("BENCH-RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,',
        "    e.connect + e.read + e.write + e.timeout + wrong, latency:percentile(50), latency:percentile(99)))",
        "  for _, thread in ipairs(threads) do",
        '    local failure = thread:get("first_failure")',
        '    if failure then io.write("BENCH-FAILURE " .. failure:gsub("\\n", " ") .. "\\n") end',
        "  end",
        '  io.write(string.format("BENCH-SOCKET-ERRORS connect %d, read %d, write %d, timeout %d\\n",',
        "    e.connect, e.read, e.write, e.timeout))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def parse_wrk(output: str) -> LoadResult:
    lines = output.splitlines()
    for line in lines:
        if line.startswith("BENCH-RESULT "):
            requests, duration_us, failures, p50_us, p99_us = (int(x) for x in line.split()[1:])
            failure = next((x.split(" ", 1)[1] for x in lines if x.startswith("BENCH-FAILURE ")), "")
            if failures and not failure:
                failure = next((x.split(" ", 1)[1] for x in lines if x.startswith("BENCH-SOCKET-ERRORS ")), "")
            return LoadResult(requests, duration_us / 1e6, failures, p50_us / 1000, p99_us / 1000, failure)
    raise RuntimeError(f"wrk printed no result:\n{output}")


def _run_wrk(load: Load) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(load))
    try:
        # One wrk thread drives even 32 connections at these rates, and leaves a core to the servers.
        out = subprocess.run(
            ["wrk", "-t1", f"-c{load.connections}", f"-d{max(1, round(load.seconds))}s", "--timeout", "60s",
             "-s", script.name, load.url],
            capture_output=True, text=True, check=True,
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    return parse_wrk(out.stdout)


def _run_python(load: Load) -> LoadResult:
    spec = {**load.__dict__}
    out = subprocess.run([sys.executable, "-m", "bench.pyload"], input=json.dumps(spec), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench.pyload failed:\n{out.stderr}")
    return LoadResult(**json.loads(out.stdout))
