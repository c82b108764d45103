"""Graceful stop and rolling restart: each part stopped by SIGTERM and started again while a partner writes.

The partner writes through the gateway without pause (organisations, volunteers, activities), each
request with an Idempotency-Key and re-sent with the same key on a 502, 503, 504 or a connection
error, as a real partner would. Meanwhile registry, activities, analytics and the gateway are
restarted one after the other (each must stop gracefully: within its grace period, nothing
cancelled), and in another test the broker. Afterwards every acknowledged write is stored exactly
once (listed through the API), and its event applied exactly once: the activities service's registry
view holds each volunteer once and recorded each volunteer event once, and analytics' figures equal
the count and the sum of hours of the activities stored.

And what a graceful stop means for one part, on raw connections: the gateway (its own HTTP
protocol, gateway/server.py) and a service (uvicorn's) answer every request they hold when SIGTERM
comes (one being forwarded, requests pipelined behind it, a head or an upload half received), each
connection's last answer saying `connection: close`, close their idle connections, accept no new
one, and exit without cancelling anything.

The tests run on the fault stack (tests/conftest.py, shared with test_platform_faults and
test_broker_loss only), so its restarts disturb no other test; each must leave it whole.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.processes import free_port, start_uvicorn, stop, wait_ready
from shared.caller import GDY_ORGANIZATION_ID, SCOPES, CallerContext, encode_caller
from tests.api import walk
from tests.conftest import eventually
from tests.factories import create_enrollment, create_org, create_project, organization_body, register, volunteer_body
from tests.gateway_inprocess import answer_ok
from tests.harness import SERVICES, Stack, needs_stoppable_broker, unique
from tests.integration.test_embedded import Output, launch, shut_down

# What a partner retries with the same Idempotency-Key: the gateway could not reach the service, or the
# service is starting or stopping; the request may or may not have been applied.
RETRIED_STATUSES = {502, 503, 504}
# How long the partner keeps re-sending one write before giving up on it (a part restarts in seconds).
GIVE_UP_AFTER = 60.0
ENROLLED = 4  # volunteers the activities are logged for (spread so no one exceeds 24 hours a day)
FIRST_DAY = date(2026, 2, 1)  # the enrolments' start; the project runs to the end of 2026
# Writes acknowledged after each restart before the next part goes: the system is writing again.
WRITES_BETWEEN = 6


@dataclass
class Partner:
    """A client that writes through the gateway as a partner system would: an Idempotency-Key per write,
    re-sent with the same key while the answer says the write may not have been made."""

    client: httpx.AsyncClient
    org: dict
    project: dict
    enrolled: list[dict]
    tag: str = field(default_factory=lambda: unique("roll"))
    acknowledged: dict[str, list[dict]] = field(default_factory=lambda: collections.defaultdict(list))
    retried: collections.Counter = field(default_factory=collections.Counter)
    refused: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    sent: int = 0

    @property
    def acked(self) -> int:
        return sum(len(answers) for answers in self.acknowledged.values())

    async def write(self, kind: str, path: str, body: dict) -> None:
        """One write, re-sent with its key until it is acknowledged, refused, or given up."""
        key = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GIVE_UP_AFTER
        while loop.time() < deadline:
            try:
                answer = await self.client.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                self.retried[type(exc).__name__] += 1
            else:
                if answer.status_code in (200, 201):
                    self.acknowledged[kind].append(answer.json())
                    return
                if answer.status_code not in RETRIED_STATUSES:
                    self.refused.append(f"{kind}: {answer.status_code} {answer.text[:300]}")
                    return
                self.retried[answer.status_code] += 1
            # The partner's own back-off between attempts, not a wait for a condition of the test.
            await asyncio.sleep(0.2)
        self.given_up.append(f"{kind} {key}")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            n = self.sent
            self.sent += 1
            await self.write("organization", "/organizations", organization_body(name=f"{self.tag}-org-{n}"))
            await self.write("volunteer", "/volunteers", volunteer_body(organization_id=self.org["id"]))
            volunteer = self.enrolled[n % ENROLLED]
            await self.write("activity", "/activities", {
                "volunteer_id": volunteer["id"], "project_id": self.project["id"], "activity_type": "tree_planting",
                "date": (FIRST_DAY + timedelta(days=(n // ENROLLED) % 300)).isoformat(), "hours": 1 + (n % 3) / 2,
                "location_code": "12", "beneficiaries": {"female": 1, "male": 1, "other": 0, "children": 0},
                "client_reference": f"{self.tag}-act-{n}",
            })


async def new_partner(admin: httpx.AsyncClient) -> Partner:
    org = await create_org(admin)
    project = await create_project(admin, org["id"])
    enrolled = [await register(admin, organization_id=org["id"]) for _ in range(ENROLLED)]
    for volunteer in enrolled:
        await create_enrollment(admin, volunteer["id"], project["id"])
    return Partner(admin, org, project, enrolled)


async def acknowledged_more(partner: Partner, more: int, timeout: float = 60.0) -> None:
    target = partner.acked + more
    await eventually(lambda: partner.acked >= target, timeout, 0.1, what=f"{more} more acknowledged writes")


async def consumed(stack: Stack, service: str, consumer: str, outcome: str) -> float:
    """Events a consumer of a service counted with this outcome since the service's process started."""
    async with httpx.AsyncClient(base_url=stack.urls[service], timeout=30) as client:
        exposition = (await client.get("/metrics")).text
    return sum(s.value for family in text_string_to_metric_families(exposition) for s in family.samples
               if s.name == "vmc_consumer_events_total" and s.labels == {"consumer": consumer, "outcome": outcome})


def restart_gracefully(stack: Stack, name: str) -> None:
    """SIGTERM, then start again: the part must have drained and stopped within its grace period."""
    log_path = stack.workdir / f"{name}.log"
    earlier = log_path.stat().st_size  # the fault stack's log: what other tests made the part write before
    code = stack.stop_part(name)
    log = log_path.read_bytes()[earlier:].decode(errors="replace")
    assert code == -15, f"{name} did not stop on SIGTERM within its grace period (exit code {code})"
    assert "timeout graceful shutdown exceeded" not in log, f"{name} cancelled requests still running"
    stack.start_part(name)
    stack.wait_ready(name, "/ready", 60)


# ---- checks ------------------------------------------------------------------------------------
def once_each(stored: list[str], acknowledged: list[str], what: str) -> None:
    """Every acknowledged item stored exactly once, and nothing stored twice."""
    counts = collections.Counter(stored)
    twice = {k: n for k, n in counts.items() if n > 1}
    missing = [k for k in acknowledged if k not in counts]
    assert not twice, f"{what} stored more than once: {twice}"
    assert not missing, f"{len(missing)} acknowledged {what} not stored: {missing[:5]}"


async def check_stored_once(partner: Partner) -> None:
    client = partner.client
    assert not partner.refused, partner.refused
    assert not partner.given_up, partner.given_up
    organizations = [o["name"] for o in await walk(client, "/organizations") if o["name"].startswith(partner.tag)]
    once_each(organizations, [o["name"] for o in partner.acknowledged["organization"]], "organisations")
    volunteers = await walk(client, "/volunteers", organization_id=partner.org["id"])
    once_each([v["email"] for v in volunteers], [v["email"] for v in partner.acknowledged["volunteer"]], "volunteers")
    activities = await walk(client, "/activities", project_id=partner.project["id"])
    references = [a["client_reference"] for a in activities if a["client_reference"].startswith(partner.tag)]
    once_each(references, [a["client_reference"] for a in partner.acknowledged["activity"]], "activities")
    # Every write stored was acknowledged (none given up), so the stored ones are exactly the acknowledged.
    assert len(references) == len(partner.acknowledged["activity"])


async def check_events_applied_once(stack: Stack, partner: Partner) -> None:
    volunteer_ids = [v["id"] for v in partner.acknowledged["volunteer"]]
    await registry_view_knows(stack, volunteer_ids)
    await analytics_counts(partner)


async def registry_view_knows(stack: Stack, volunteer_ids: list[str]) -> None:
    """The activities service's view of the registry holds each volunteer once, and recorded each of
    their registry events once (as applied)."""
    outbox = await stack.query("registry", "SELECT event_id, key FROM outbox")
    wanted = set(volunteer_ids)
    event_ids = {event_id for event_id, key in outbox if key in wanted}
    assert len(event_ids) >= len(wanted)

    async def recorded() -> dict[str, list[str]]:
        rows = await stack.query("activities",
                                 "SELECT event_id, outcome FROM processed_events WHERE consumer = 'activities-registry'")
        seen: dict[str, list[str]] = collections.defaultdict(list)
        for event_id, outcome in rows:
            if event_id in event_ids:
                seen[event_id].append(outcome)
        return seen

    async def all_recorded() -> bool:
        return len(await recorded()) == len(event_ids)

    await eventually(all_recorded, 60, 0.3, what=f"{len(event_ids)} volunteer events recorded by activities")
    assert sorted(map(tuple, (await recorded()).values())) == [("applied",)] * len(event_ids)
    rows = await stack.query("activities", "SELECT id FROM registry_volunteers")
    known = collections.Counter(str(uuid.UUID(str(volunteer_id))) for (volunteer_id,) in rows)
    assert all(known[v] == 1 for v in volunteer_ids), {v: known[v] for v in volunteer_ids if known[v] != 1}


async def analytics_counts(partner: Partner) -> None:
    """Analytics' figures equal what is stored: the project's activities and their hours, and every
    organisation of the stack (each activity and organisation event applied once)."""
    activities = await walk(partner.client, "/activities", project_id=partner.project["id"])
    expected = (len(activities), sum(a["hours"] for a in activities), len(await walk(partner.client, "/organizations")))

    async def figures() -> tuple[int, float, int]:
        answer = await partner.client.get("/analytics/overview", params={"project": partner.project["id"], "status": "all"})
        row = answer.json()["rows"][0] if answer.status_code == 200 else {}
        organizations = (await partner.client.get("/analytics/overview")).json().get("organizations")
        return row.get("activities"), row.get("hours"), organizations

    async def equal() -> bool:
        return await figures() == expected

    await eventually(equal, 60, 0.3, what=f"analytics counting (activities, hours, organisations) {expected}")


# ---- the tests -----------------------------------------------------------------------------------
async def test_each_service_and_the_gateway_restarted_in_turn_under_writes(fault_stack: Stack, fault_admin: httpx.AsyncClient):
    partner = await new_partner(fault_admin)
    stop = asyncio.Event()
    writer = asyncio.create_task(partner.run(stop))
    try:
        await acknowledged_more(partner, WRITES_BETWEEN)
        for name in ("registry", "activities", "analytics", "gateway"):
            await asyncio.to_thread(restart_gracefully, fault_stack, name)
            await acknowledged_more(partner, WRITES_BETWEEN)
    finally:
        stop.set()
        await writer
    assert sum(partner.retried.values()) > 0, "no write met a restart: the test proved nothing"
    await check_stored_once(partner)
    await check_events_applied_once(fault_stack, partner)
    # Each consumer committed what it had applied and left its group when its service stopped: the
    # restarted process read on from there, and met no event twice.
    for service, consumer in (("activities", "activities-registry"), ("analytics", "analytics")):
        assert await consumed(fault_stack, service, consumer, "duplicate") == 0, f"{consumer} re-read events"
        assert await consumed(fault_stack, service, consumer, "applied") > 0


@needs_stoppable_broker
async def test_broker_restarted_under_writes(fault_stack: Stack, fault_admin: httpx.AsyncClient):
    partner = await new_partner(fault_admin)
    stop = asyncio.Event()
    writer = asyncio.create_task(partner.run(stop))
    try:
        await acknowledged_more(partner, WRITES_BETWEEN)
        await asyncio.to_thread(fault_stack.broker.stop)
        await acknowledged_more(partner, WRITES_BETWEEN)  # the outboxes hold events while the broker is away
        await asyncio.to_thread(fault_stack.broker.start)
        await acknowledged_more(partner, WRITES_BETWEEN)
    finally:
        stop.set()
        await writer
    await check_stored_once(partner)
    await check_events_applied_once(fault_stack, partner)


# ---- one part's graceful stop, on raw connections ------------------------------------------------
class HeldUpstream:
    """A service stand-in that holds every request until released (its /ready answers at once), and
    notes the request targets it has received."""

    def __init__(self):
        self.server: asyncio.base_events.Server | None = None
        self.received: list[str] = []
        self.release = asyncio.Event()

    async def __aenter__(self) -> "HeldUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                status, headers, _ = await read_message(reader, request=True)
                target = status
                if not target.startswith("/ready"):
                    self.received.append(target)
                    await self.release.wait()
                await answer_ok(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def read_message(reader: asyncio.StreamReader, request: bool = False) -> tuple:
    """One HTTP/1.1 message with a content-length body: (status, or the target of a request; headers; body)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    first = head[0].split(" ")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in head[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return (first[1] if request else int(first[1])), headers, body


def padded(body: dict) -> bytes:
    """The JSON of `body` after 200 kB of white space: an upload that takes more than one read."""
    return b" " * 200_000 + json.dumps(body).encode()


def request_bytes(target: str, headers: dict[str, str], method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: vmc.test", *(f"{k}: {v}" for k, v in headers.items())]
    if method != "GET":
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def refused(port: int) -> bool:
    """Whether a new connection to the port is refused (the server stopped accepting)."""
    try:
        _, writer = await connect(port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def answers_then_closes(reader: asyncio.StreamReader, count: int) -> list[tuple[int, dict, bytes]]:
    """`count` answers, the last saying `connection: close`, then the end of the connection."""
    answers = [await asyncio.wait_for(read_message(reader), 20) for _ in range(count)]
    assert [a[1].get("connection") for a in answers] == [None] * (count - 1) + ["close"], answers
    assert await asyncio.wait_for(reader.read(), 10) == b""
    return answers


def stopped_gracefully(proc, log_path, timeout: float = 20.0) -> None:
    """The process ended by the SIGTERM it caught (uvicorn re-raises it once stopped) and cancelled nothing."""
    assert proc.wait(timeout) == -15
    assert "timeout graceful shutdown exceeded" not in log_path.read_text(errors="replace")


@pytest.mark.dialect_free
async def test_gateway_answers_what_it_holds_when_stopped(fault_stack: Stack):
    """One request forwarded, two pipelined, a head and an upload half received, and an idle
    connection, when SIGTERM comes: all answered, each connection closed after its last answer."""
    auth = {"authorization": f"Bearer {fault_stack.admin_key}"}
    async with HeldUpstream() as upstream:
        port = free_port()
        log_path = fault_stack.workdir / "gateway-stopped.log"
        env = {**fault_stack.env(), "VMC_GATEWAY_PORT": str(port), "VMC_REGISTRY_URL": upstream.url,
               "VMC_GATEWAY_DATABASE_URL": fault_stack.db_urls["gateway"]}
        gateway = start_uvicorn("gateway.app:create_app", port, env, log_path)
        try:
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/ready", 60, gateway)
            idle_reader, idle = await connect(port)
            upstream.release.set()
            idle.write(request_bytes("/api/v1/organizations?quick", auth))
            assert (await read_message(idle_reader))[0] == 200
            upstream.release.clear()

            one_reader, one = await connect(port)
            one.write(request_bytes("/api/v1/organizations?one", auth))
            piped_reader, piped = await connect(port)
            piped.write(request_bytes("/api/v1/organizations?first", auth) + request_bytes("/api/v1/organizations?second", auth))
            body = padded(organization_body())
            upload_reader, upload = await connect(port)
            whole = request_bytes("/api/v1/organizations?upload", auth, "POST", body)
            upload.write(whole[:len(whole) // 2])
            head_reader, head = await connect(port)
            whole_head = request_bytes("/api/v1/organizations?head", auth)
            head.write(whole_head[:20])
            await eventually(lambda: {"/api/v1/organizations?one", "/api/v1/organizations?first"} <= set(upstream.received),
                             10, what="the forwarded requests at the service")

            gateway.send_signal(signal.SIGTERM)
            await eventually(lambda: refused(port), 10, what="the gateway refusing new connections")
            assert await asyncio.wait_for(idle_reader.read(), 10) == b"", "the idle connection is closed"
            upload.write(whole[len(whole) // 2:])
            head.write(whole_head[20:])
            upstream.release.set()

            assert [a[0] for a in await answers_then_closes(one_reader, 1)] == [200]
            assert [a[0] for a in await answers_then_closes(piped_reader, 2)] == [200, 200]
            assert [a[0] for a in await answers_then_closes(upload_reader, 1)] == [200]
            assert [a[0] for a in await answers_then_closes(head_reader, 1)] == [200]
            await asyncio.to_thread(stopped_gracefully, gateway, log_path)
        finally:
            stop(gateway)
    assert {"/api/v1/organizations?second", "/api/v1/organizations?upload", "/api/v1/organizations?head"} <= set(upstream.received)


def start_registry_replica(stack: Stack, entry: str, port: int, log_path: Path) -> subprocess.Popen:
    """Another registry replica, on its own port and the stack's registry database, started as `make
    run` starts a part (uvicorn's command) or as the production image does (`vmc serve`)."""
    env = {**stack.env(), "VMC_REGISTRY_PORT": str(port), "VMC_REGISTRY_DATABASE_URL": stack.db_urls["registry"]}
    if entry == "uvicorn":
        return start_uvicorn(SERVICES["registry"], port, env, log_path)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "registry", "--host", "127.0.0.1"],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


STALL_SECONDS = 0.3


@pytest.mark.parametrize("stalled", [False, True], ids=["running", "stalled"])
@pytest.mark.parametrize("entry", ["uvicorn", "vmc serve"])
async def test_service_finishes_an_upload_in_flight_when_stopped(fault_stack: Stack, entry: str, stalled: bool):
    """uvicorn's own protocol (the services'), started as `make run` does or as the image does: a
    create whose body is half sent when SIGTERM comes is still read, stored and answered, then the
    service exits. `stalled`: the process is not scheduled from before the client connects until after
    the SIGTERM (SIGSTOP, then SIGCONT), as on a busy machine, so its stop finds the connection not
    accepted yet, its bytes unread (plain uvicorn resets it: deploy/server.py)."""
    port = free_port()
    log_path = fault_stack.workdir / f"registry-{port}.log"
    replica = start_registry_replica(fault_stack, entry, port, log_path)
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/ready", 60, replica)
        caller = CallerContext("test-national", uuid.UUID(GDY_ORGANIZATION_ID), frozenset(SCOPES), national=True)
        name = unique("upload")
        whole = request_bytes("/api/v1/organizations", encode_caller(caller, fault_stack.secret), "POST",
                              padded(organization_body(name=name)))
        if stalled:
            replica.send_signal(signal.SIGSTOP)
        reader, writer = await connect(port)
        writer.write(whole[:len(whole) // 2])
        await writer.drain()
        replica.send_signal(signal.SIGTERM)
        if stalled:
            # Not a wait for a condition: how long the process goes unscheduled, past uvicorn's 0.1 s tick, so
            # that on waking it sees the stop before it has accepted the connection.
            await asyncio.sleep(STALL_SECONDS)
            replica.send_signal(signal.SIGCONT)
        await eventually(lambda: refused(port), 10, what="the registry refusing new connections")
        writer.write(whole[len(whole) // 2:])
        [(status, _, answer)] = await answers_then_closes(reader, 1)
        assert status == 201, answer
        await asyncio.to_thread(stopped_gracefully, replica, log_path)
    finally:
        stop(replica)
    async with httpx.AsyncClient(base_url=fault_stack.api, timeout=30,
                                 headers={"Authorization": f"Bearer {fault_stack.admin_key}"}) as admin:
        assert [o["name"] for o in await walk(admin, "/organizations") if o["name"] == name] == [name]


@pytest.mark.dialect_free
async def test_make_run_stops_the_gateway_then_the_services_then_the_broker(tmp_path):
    """`make run` told to stop (SIGTERM, as Ctrl-C): an upload in flight through the gateway is still
    stored and answered; the gateway is gone before the services stop, the broker last; none killed."""
    ports = {name: free_port() for name in ("gateway", "broker", "registry", "activities", "analytics")}
    key = f"vmc_{uuid.uuid4().hex[:8]}_stop-test-key"
    launcher = launch(tmp_path, ports, key)
    output = Output(launcher)
    try:
        await asyncio.to_thread(output.until, "First admin API key")
        whole = request_bytes("/api/v1/organizations", {"authorization": f"Bearer {key}"}, "POST",
                              padded(organization_body()))
        reader, writer = await connect(ports["gateway"])
        writer.write(whole[:len(whole) // 2])
        launcher.send_signal(signal.SIGTERM)
        await eventually(lambda: refused(ports["gateway"]), 10, what="the gateway refusing new connections")
        writer.write(whole[len(whole) // 2:])
        [(status, _, answer)] = await answers_then_closes(reader, 1)
        assert status == 201, answer
        rest = await asyncio.to_thread(output.rest)
        assert await asyncio.to_thread(launcher.wait, 30) == 0
    finally:
        shut_down(launcher)
    stopped = [line.split(":")[0].strip() for line in rest.splitlines() if line.startswith("  ")]
    assert stopped[0] == "gateway" and stopped[-1] == "broker", rest
    assert sorted(stopped[1:-1]) == ["activities", "analytics", "registry"], rest
    assert "killed" not in rest, rest
