"""`make run`: the whole system on one machine (broker, the manifest's services, gateway) until Ctrl-C."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy.processes import port_in_use, start_tansu, start_uvicorn, wait_ready
from shared.manifest import SERVICES


def _persistent_secret(path: Path, make) -> str:
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _reason(log: Path, lines: int = 8) -> str:
    """The end of a part's log, indented: why it stopped (a refused setting, a traceback's last lines)."""
    try:
        tail = log.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return "  (no log)"
    return "\n".join("  " + line[:400] for line in tail) or "  (empty log)"


class _StopRequested(BaseException):
    """SIGTERM or SIGINT while the parts were starting: stop what started instead of waiting for the
    rest (a BaseException, as KeyboardInterrupt, so the readiness polls' `except Exception` let it by)."""


class _Signals:
    """SIGTERM and SIGINT (Ctrl-C): the first stops the parts in order, each draining; another during
    the stop kills what is left (an operator who will not wait for the grace periods)."""

    def __init__(self, procs: dict[str, subprocess.Popen]):
        self.procs = procs
        self.running = False  # every part is up: the watch loop sees `stopping`
        self.stopping = False
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, *_) -> None:
        if self.stopping:
            print("stopping now: killing what is left", file=sys.stderr, flush=True)
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.kill()
            return
        self.stopping = True
        if not self.running:
            raise _StopRequested


# How long a part may take to stop after SIGTERM before it is killed: uvicorn's graceful timeout for
# requests in flight (deploy/processes.py: 10 s), then the relay's flush and the consumers' last commit.
STOP_GRACE_SECONDS = 30.0


def stop_in_order(procs: dict[str, subprocess.Popen]) -> None:
    """The gateway first, so no new request reaches a service, and gone before the services stop, so
    the requests it is answering still reach them; then the services together, each answering what it
    holds, flushing its outbox and committing its consumers; the broker last, which they flush to."""
    if not procs:
        return
    print("stopping: the gateway, then the services, then the broker ...", flush=True)
    for group in (["gateway"], [s.name for s in SERVICES], ["broker"]):
        started = time.monotonic()
        running = [name for name in group if name in procs and procs[name].poll() is None]
        for name in running:
            procs[name].send_signal(signal.SIGTERM)
        for name in running:
            print(f"  {name}: {_ended(procs[name], started + STOP_GRACE_SECONDS) or 'stopped'} "
                  f"in {time.monotonic() - started:.1f} s", flush=True)


def _ended(proc: subprocess.Popen, deadline: float) -> str:
    """Wait for a part told to stop (not signalled again: a second SIGTERM makes uvicorn quit at once);
    killed at the deadline. Says so when it was."""
    try:
        proc.wait(max(0.1, deadline - time.monotonic()))
        return ""
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed after its grace period,"


def main() -> int:
    data_dir = Path(os.environ.get("VMC_DATA_DIR", "var")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    gateway_port = int(os.environ.get("VMC_GATEWAY_PORT", "8000"))
    ports = {s.name: int(os.environ.get(s.port_setting, s.default_port)) for s in SERVICES}
    ports["gateway"] = gateway_port
    if not os.environ.get("VMC_KAFKA_BOOTSTRAP"):
        ports["broker"] = int(os.environ.get("VMC_BROKER_PORT", "9092"))
    # Checked first: a part that cannot bind would fail, but another system's part on that port would
    # answer the readiness checks in its place (and the key printed would not be that system's).
    taken = [f"{port} ({name}, VMC_{name.upper()}_PORT)" for name, port in ports.items() if port_in_use(port)]
    if taken:
        print(f"error: port(s) in use: {', '.join(taken)}. Is VMC Connect already running? Stop it, or choose other "
              "ports with those variables.", file=sys.stderr)
        return 1
    env = {
        "VMC_DATA_DIR": str(data_dir),
        "VMC_INTERNAL_SECRET": os.environ.get("VMC_INTERNAL_SECRET")
        or _persistent_secret(data_dir / "internal-secret", lambda: secrets.token_urlsafe(32)),
    }
    admin_key = os.environ.get("VMC_BOOTSTRAP_ADMIN_KEY") or _persistent_secret(
        data_dir / "bootstrap-admin-key", lambda: f"vmc_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    )
    env["VMC_BOOTSTRAP_ADMIN_KEY"] = admin_key

    procs: dict[str, subprocess.Popen] = {}
    signals = _Signals(procs)
    starting = "broker"  # the part being waited for, named when it fails to start
    try:
        if os.environ.get("VMC_KAFKA_BOOTSTRAP"):
            env["VMC_KAFKA_BOOTSTRAP"] = os.environ["VMC_KAFKA_BOOTSTRAP"]
            print(f"broker: external, {env['VMC_KAFKA_BOOTSTRAP']}")
        else:
            port = ports["broker"]
            procs["broker"] = start_tansu(port, logs / "broker.log")
            env["VMC_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
            print(f"broker: Tansu on 127.0.0.1:{port} (memory storage; services re-publish their outboxes"
                  " when they find its log lost)")
        for s in SERVICES:
            port = ports[s.name]
            env[s.url_setting] = f"http://127.0.0.1:{port}"
            procs[s.name] = start_uvicorn(s.app, port, {**env, s.port_setting: str(port)}, logs / f"{s.name}.log")
        for s in SERVICES:
            port = ports[s.name]
            starting = s.name
            wait_ready(f"http://127.0.0.1:{port}/ready", 90, procs[s.name])
            print(f"{s.name}: ready on 127.0.0.1:{port}")
        procs["gateway"] = start_uvicorn(
            "gateway.app:create_app", gateway_port, {**env, "VMC_GATEWAY_PORT": str(gateway_port)}, logs / "gateway.log"
        )
        starting = "gateway"
        wait_ready(f"http://127.0.0.1:{gateway_port}/ready", 60, procs["gateway"])
        print(f"\nVMC Connect is running: http://127.0.0.1:{gateway_port}/api/v1  (docs: /api/v1/docs)")
        print(f"First admin API key (national, every scope): {admin_key}")
        print(f"Data: {data_dir}   Logs: {logs}   Stop: Ctrl-C\n", flush=True)
        signals.running = True
        while not signals.stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"error: {name} exited with code {proc.returncode}. The end of {logs / (name + '.log')}:\n"
                          f"{_reason(logs / (name + '.log'))}\nStopping.", file=sys.stderr, flush=True)
                    return 1
            time.sleep(0.5)
        return 0
    except _StopRequested:
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {starting} did not start: {exc}. The end of {logs / (starting + '.log')}:\n"
              f"{_reason(logs / (starting + '.log'))}", file=sys.stderr)
        return 1
    finally:
        signals.stopping = True
        stop_in_order(procs)


if __name__ == "__main__":
    sys.exit(main())
