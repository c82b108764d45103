"""bench.gateway_instructions: reading callgrind's dumps, and counting a real process's instructions per request."""
from __future__ import annotations

import shutil
import subprocess
import sys
from functools import partial

import pytest

from bench import interleave
from bench.gateway_instructions import callgrind_prefix, counted, dumped_total
from deploy.processes import free_port, stop, wait_port
from tests.unit.test_bench_interleave import servers  # noqa: F401 - the fixture: two local HTTP servers


def test_the_totals_line_is_the_count_even_after_a_summary_of_zero():
    # What callgrind writes when counting was switched on by callgrind_control: summary 0, totals right.
    assert dumped_total("events: Ir\nsummary: 0\n\nfn=(1) main\n16 3\ntotals: 49658329\n") == 49658329
    assert dumped_total("events: Ir\nsummary: 1234\n") == 1234
    with pytest.raises(ValueError, match="no totals"):
        dumped_total("events: Ir\n")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_a_process_under_callgrind_is_counted_per_request_only_while_counting_is_on(servers, tmp_path):  # noqa: F811
    port = free_port()
    upstream = int(servers[0].rsplit(":", 1)[1].split("/")[0])
    out = tmp_path / "relay.callgrind"
    proc = subprocess.Popen([*callgrind_prefix(out), sys.executable, "-m", "bench.relay", str(port), str(upstream)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, 60)
        way = [interleave.Way("relay", f"http://127.0.0.1:{port}/v", {})]
        send = partial(interleave.turns, way, "POST", '{"n":{n}}', warmup=0)
        send(20, 0)  # warm: connections open, code paths taken once
        few, many = counted(proc.pid, out, partial(send, 20, 100)), counted(proc.pid, out, partial(send, 80, 200))
        idle = counted(proc.pid, out, lambda: None)
    finally:
        stop(proc, timeout=30)
    # A relayed request runs thousands of instructions; four times the requests, about four times the count.
    assert few / 20 > 1000
    assert 0.75 < (many / 80) / (few / 20) < 1.33
    assert idle < few / 20
