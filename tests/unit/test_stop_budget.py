"""A part told to stop finishes within what the orchestrator waits before it kills it.

After SIGTERM a part answers its requests in flight (uvicorn's graceful timeout), then stops its
consumers one after the other (each finishes its batch, commits and leaves its group, within its stop
timeout) and flushes its outbox relay (within its flush timeout); the gateway writes its queued audit
entries instead. The sum of those bounds, plus the preStop pause in Kubernetes, must fit in
terminationGracePeriodSeconds, compose's stop_grace_period and the launcher's grace; otherwise a slow
stop is cut by SIGKILL, and the relay's flush and the consumers' last commits with it.
"""
from __future__ import annotations

import inspect
import re
from importlib import import_module

import pytest

from deploy import embedded, processes, production
from shared.consumer import EventConsumer
from shared.manifest import SERVICES
from shared.outbox import OutboxRelay
from tests.unit.test_deploy import compose, k8s_documents

# Closing the clients and the database pool, and the process ending, after the bounded steps.
MARGIN_SECONDS = 2
# The gateway's audit writer gets this long to write what is queued (gateway/audit.py AuditWriter.stop).
AUDIT_FLUSH_SECONDS = 10


def default(function, parameter: str) -> float:
    return inspect.signature(function).parameters[parameter].default


def consumers_of(part: str) -> int:
    """How many consumer groups the part runs (read from its app, built without starting it)."""
    if part == "gateway":
        return 0
    service = next(s for s in SERVICES if s.name == part)
    settings = production.PARTS[part].settings_class().model_construct()
    return len(import_module(service.app.partition(":")[0]).create_app(settings).state.spec.consumers)


def after_requests(part: str) -> float:
    """What a part does once its requests are answered, at most."""
    if part == "gateway":
        return AUDIT_FLUSH_SECONDS + MARGIN_SECONDS
    return (consumers_of(part) * default(EventConsumer.__init__, "stop_timeout")
            + default(OutboxRelay.__init__, "flush_timeout") + MARGIN_SECONDS)


PARTS = [*(s.name for s in SERVICES), "gateway"]


def seconds(duration: str) -> float:
    """A compose duration such as `30s` or `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", duration))


@pytest.mark.parametrize("part", PARTS)
def test_kubernetes_waits_for_the_prestop_pause_and_a_whole_graceful_stop(part):
    (workload,) = [doc for _, doc in k8s_documents()
                   if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] == part]
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"  # endpoints are removed while the part still serves
    needed = float(command[1]) + production.GRACEFUL_SHUTDOWN_SECONDS + after_requests(part)
    assert pod["terminationGracePeriodSeconds"] >= needed, f"{part} needs {needed} s to stop"


@pytest.mark.parametrize("part", PARTS)
def test_compose_waits_for_a_whole_graceful_stop(part):
    services = {name: s for name, s in compose()["services"].items() if s.get("command", [None, None])[:1] == ["serve"]}
    mine = [s for s in services.values() if s["command"] == ["serve", part]]
    assert mine, f"no compose service runs {part}"
    needed = production.GRACEFUL_SHUTDOWN_SECONDS + after_requests(part)
    for service in mine:
        assert seconds(service["stop_grace_period"]) >= needed, f"{part} needs {needed} s to stop"


@pytest.mark.parametrize("part", PARTS)
def test_make_run_waits_for_a_whole_graceful_stop(part):
    assert embedded.STOP_GRACE_SECONDS >= processes.GRACEFUL_SHUTDOWN_SECONDS + after_requests(part)
