"""`make run`'s launcher: starts everything, prints URL and key, survives a restart, reports a death."""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.processes import free_port
from tests.conftest import wait_until
from tests.harness import remove_workdir, new_workdir

# The same on any database: run in the PostgreSQL pass only (pyproject.toml, Makefile).
pytestmark = pytest.mark.dialect_free


def launch(data_dir: Path, ports: dict[str, int], admin_key: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMC_")}
    env.update({f"VMC_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env["VMC_DATA_DIR"] = str(data_dir)
    if admin_key:
        env["VMC_BOOTSTRAP_ADMIN_KEY"] = admin_key
    return subprocess.Popen([sys.executable, "-m", "deploy.embedded"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


class Output:
    """The launcher's output, read by a thread: a read on the pipe itself could block past any deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip())
        self.lines.put(None)  # the launcher closed its output

    def _next(self, deadline: float) -> str | None:
        return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))

    def until(self, marker: str, timeout: float = 90) -> list[str]:
        """The lines up to and including the first one containing `marker`."""
        lines, deadline = [], time.monotonic() + timeout
        try:
            while (line := self._next(deadline)) is not None:
                lines.append(line)
                if marker in line:
                    return lines
        except queue.Empty:
            pass
        raise AssertionError(f"{marker!r} not printed within {timeout} s; got: {lines}")

    def rest(self, timeout: float = 60) -> str:
        """Everything until the launcher closes its output."""
        lines, deadline = [], time.monotonic() + timeout
        try:
            while (line := self._next(deadline)) is not None:
                lines.append(line)
        except queue.Empty:
            raise AssertionError(f"the launcher's output still open after {timeout} s; got: {lines}") from None
        return "\n".join(lines)


def shut_down(proc: subprocess.Popen) -> None:
    """SIGTERM, so the launcher stops its parts (they run in sessions of their own and would outlive a kill)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def pid_of(app: str, port: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if app.encode() in cmdline and str(port).encode() in cmdline:
                return int(entry.name)
    raise AssertionError(f"no process runs {app} on port {port}")


def consumed(analytics_port: int, outcome: str) -> int:
    """Events the analytics consumer counted with this outcome since its process started (its /metrics)."""
    exposition = httpx.get(f"http://127.0.0.1:{analytics_port}/metrics", timeout=30).text
    return int(sum(s.value for family in text_string_to_metric_families(exposition) for s in family.samples
                   if s.name == "vmc_consumer_events_total"
                   and s.labels == {"consumer": "analytics", "outcome": outcome}))


@pytest.fixture
def data_dir():
    path = new_workdir()
    yield path
    remove_workdir(path)


def test_run_restart_keeps_data_and_applies_nothing_twice(data_dir):
    ports = {name: free_port() for name in ("gateway", "broker", "registry", "activities", "analytics")}
    key = "vmc_0badc0de_given-bootstrap-key-for-the-test"
    proc = launch(data_dir, ports, key)
    try:
        lines = Output(proc).until("First admin API key")
        assert any(f"http://127.0.0.1:{ports['gateway']}/api/v1" in line for line in lines)
        assert lines[-1].endswith(key)
        api = httpx.Client(base_url=f"http://127.0.0.1:{ports['gateway']}/api/v1",
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
        for n in range(3):
            assert api.post("/organizations", json={"name": f"org {n}", "kind": "ngo"}).status_code == 201
        wait_until(lambda: api.get("/analytics/overview").json()["organizations"] == 4,  # + the seeded GDY
                   what="analytics counting the 3 new organisations")
        assert stop(proc) == 0
    finally:
        shut_down(proc)

    proc = launch(data_dir, ports)  # same data dir, no key given: the stored one still works
    output = Output(proc)
    try:
        output.until("First admin API key")
        api = httpx.Client(base_url=f"http://127.0.0.1:{ports['gateway']}/api/v1",
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
        names = {o["name"] for o in api.get("/organizations", params={"limit": 500}).json()["items"]}
        assert {"org 0", "org 1", "org 2"} <= names
        assert api.post("/organizations", json={"name": "org 3", "kind": "ngo"}).status_code == 201
        wait_until(lambda: api.get("/analytics/overview").json()["organizations"] == 5,
                   what="analytics counting the organisation made after the restart")
        # The broker came back empty; the registry re-published its outbox (the 4 events analytics had
        # applied before the restart, and the new one); analytics' store, kept in the data dir, knew the
        # 4 and skipped them. Its DuckDB file is held by the running service: read its /metrics.
        wait_until(lambda: consumed(ports["analytics"], "applied") + consumed(ports["analytics"], "duplicate") >= 5,
                   60, what="analytics seeing the 5 events of the outbox")
        assert consumed(ports["analytics"], "applied") == 1

        # A part that dies is reported, and the launcher stops the rest.
        os.kill(pid_of("services.registry.app:create_app", ports["registry"]), signal.SIGKILL)
        rest = output.rest()
        assert proc.wait(60) == 1
        assert "registry exited" in rest
    finally:
        shut_down(proc)


def test_a_port_in_use_stops_the_launch_before_anything_starts(data_dir):
    """A second `make run` beside a running one: the other system's parts would have answered this
    one's readiness checks, and it printed a key that the running gateway does not know."""
    ports = {name: free_port() for name in ("gateway", "broker", "registry", "activities", "analytics")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["registry"]))
        taken.listen()
        proc = launch(data_dir, ports)
        try:
            output, _ = proc.communicate(timeout=30)
        finally:
            shut_down(proc)
    assert proc.returncode == 1
    assert f"{ports['registry']} (registry, VMC_REGISTRY_PORT)" in output and "already running" in output, output
    assert "VMC Connect is running" not in output and not (data_dir / "logs" / "broker.log").exists()
