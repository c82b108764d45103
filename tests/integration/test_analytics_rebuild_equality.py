"""A rebuild gives exactly the live figures, on every endpoint, through the gateway (issue 17, point 6).

A stack of its own (its broker holds only this module's events; its topics made by `vmc topics`, as
production makes them, before the services start) takes a varied programme history through the
gateway (programme_history.py). Once every event has reached analytics, every answer a user can ask
for is captured with a national key that sees small cells and with an organisation's key that gets
them suppressed (analytics_answers.py): several hundred answers in JSON, CSV and HXL, and DHIS2
exports. Then the rebuild command runs as an operator would, inside the running service (`--url`) and
with the service stopped, and every answer must come back byte for byte the same but for `as_of`.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.events import ACTIVITIES_TOPIC, REGISTRY_TOPIC
from tests.factories import org_key
from tests.harness import Broker, Databases, Stack, new_workdir, remove_workdir
from tests.integration.analytics_answers import Answer, capture, differences, questions, wait_settled
from tests.integration.programme_history import History, write_programme_history

ROOT = Path(__file__).resolve().parents[2]
VMC = str(Path(sys.executable).with_name("vmc"))
TOPICS = (REGISTRY_TOPIC, ACTIVITIES_TOPIC)
PARTITIONS = 3


@pytest.fixture(scope="module")
def own_stack():
    # Not harness.stack_of_its_own: the topics must be made by `vmc topics` between the broker's start and
    # the services' (which would otherwise make them with the broker's default retention).
    workdir = new_workdir()
    broker = Broker(workdir)
    stack = Stack(broker=broker, workdir=workdir, databases=Databases(workdir))
    try:
        made = subprocess.run([VMC, "topics", "--partitions", str(PARTITIONS), "--replication-factor", "1"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, env={**os.environ, **stack.env()})
        assert made.returncode == 0, made.stderr
        stack.start()
        yield stack
    finally:
        stack.close()
        broker.close()
        remove_workdir(workdir)


@dataclass
class Live:
    """The history written and every answer read before any rebuild, per key."""

    history: History
    answers: dict[str, dict[str, Answer]]


async def read_everything(stack: Stack, history: History) -> dict[str, dict[str, Answer]]:
    """Every question through the gateway, with the national key (sees small cells) and A's key (its tree
    of A and A1 only, small cells suppressed, with complementary suppression)."""
    asked = questions(history)
    async with _gateway(stack, stack.admin_key) as national, \
            org_key(stack, national, history.units["A"].org["id"], ["analytics:read"]) as organisation:
        return {"national": await capture(national, asked), "organisation": await capture(organisation, asked)}


@pytest.fixture(scope="module")
async def live(own_stack: Stack) -> Live:
    async with _gateway(own_stack, own_stack.admin_key) as admin:
        history = await write_programme_history(admin)
    await _wait_settled(own_stack)
    answers = await read_everything(own_stack, history)
    _check_the_figures_are_the_history(answers, history)
    return Live(history, answers)


async def test_the_topics_keep_every_event_for_ever(own_stack: Stack):
    """`vmc topics` (how production makes them) sets retention.ms -1: a rebuild can replay from the first event."""
    admin = AIOKafkaAdminClient(bootstrap_servers=own_stack.broker.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in TOPICS])
    finally:
        await admin.close()
    configs = {resource[3]: {entry[0]: entry[1] for entry in resource[4]} for resource in described.resources}
    assert {t: configs[t].get("retention.ms") for t in TOPICS} == {t: "-1" for t in TOPICS}, configs


async def test_a_rebuild_inside_the_running_service_answers_every_question_the_same(own_stack: Stack, live: Live):
    out = await _run_rebuild(own_stack, "--url", own_stack.urls["analytics"])
    _check_progress(out, states=("replaying", "catching up"), while_running=True)
    _assert_same(live.answers, await read_everything(own_stack, live.history))


async def test_a_rebuild_of_the_stopped_service_answers_every_question_the_same(own_stack: Stack, live: Live):
    await asyncio.to_thread(own_stack.stop_part, "analytics")
    try:
        out = await _run_rebuild(own_stack)
    finally:
        await asyncio.to_thread(own_stack.start_part, "analytics")
        await asyncio.to_thread(own_stack.wait_ready, "analytics", "/ready", 60)
    _check_progress(out, states=("replaying",), while_running=False)
    _assert_same(live.answers, await read_everything(own_stack, live.history))


# ---- helpers ----------------------------------------------------------------------------------------------
def _gateway(stack: Stack, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {key}"}, timeout=60)


async def _wait_settled(stack: Stack) -> None:
    """Every event applied by analytics; its /ready then says so too (no lag, an as_of)."""
    ready = await wait_settled(stack)
    lag = ready["consumers"]["analytics"]["lag"]
    assert lag and set(lag.values()) == {0} and ready["store"]["as_of"], ready


def _check_the_figures_are_the_history(answers: dict[str, dict[str, Answer]], history: History) -> None:
    """The live answers are the history's (a capture of errors or empty figures would compare equal too)."""
    national, organisation = answers["national"], answers["organisation"]
    bad = {f"{key} {name}": a.status for key, got in answers.items() for name, a in got.items() if a.status != 200}
    assert not bad, bad
    overview = orjson.loads(national["json /analytics/overview?status=all"].body)["rows"]
    verified = orjson.loads(national["json /analytics/overview?"].body)["rows"]
    assert (overview[0]["activities"], verified[0]["activities"]) == (history.activities, history.verified)
    # The organisation's key: small cells hidden, first or complementary.
    by_sex = orjson.loads(organisation["json /analytics/hours?group_by=sex"].body)["rows"]
    assert any(r["suppressed"] for r in by_sex) and not all(r["suppressed"] for r in by_sex), by_sex
    skills = orjson.loads(national["json /analytics/skills?group_by=hours_band&instrument=soft-skills-v1"].body)
    assert [r["hours_band"] for r in skills["rows"]] == ["0-19", "20-49", "50+"], skills


async def _run_rebuild(stack: Stack, *args: str) -> list[str]:
    """`python -m services.analytics.rebuild [args]` as an operator runs it; its output lines."""
    command = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.analytics.rebuild", *args, cwd=ROOT, env={**os.environ, **stack.env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(command.communicate(), 120)
    assert command.returncode == 0, (out + err).decode()
    return out.decode().splitlines()


def _check_progress(lines: list[str], states: tuple[str, ...], while_running: bool) -> None:
    """Lines of progress (`while_running`: at least one before the end; offline, a line a second, so a
    log this small may end first), then `done` with every partition of both topics at its end."""
    assert lines and lines[-1].startswith("done: "), lines
    assert all(line.startswith(tuple(f"{s}: " for s in (*states, "done"))) for line in lines), lines
    assert len(lines) >= 2 or not while_running, lines
    for topic in TOPICS:
        for partition in range(PARTITIONS):
            assert re.search(rf"{re.escape(topic)}/{partition} (\d+)/\1\b", lines[-1]), lines[-1]


def _assert_same(before: dict[str, dict[str, Answer]], after: dict[str, dict[str, Answer]]) -> None:
    report = [line for key in before for line in [f"[{key}]", *differences(before[key], after[key])]
              if not line.endswith(" 0 of " + str(len(before[key])) + " answers differ")]
    assert after == before, "\n".join(report)
