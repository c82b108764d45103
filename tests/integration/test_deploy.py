"""Migrations as a step of their own: `vmc migrate` on fresh databases (PostgreSQL or SQLite, as the run
has), twice and from two processes at once, and a part started without migrating waiting for it."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest
from sqlalchemy import text

from deploy.processes import free_port, start_uvicorn, stop
from deploy.production import PARTS
from shared.db import make_engine
from tests.harness import Databases, broker_kind

VERSIONS = {name: sorted(m.version for m in part.migrations()) for name, part in PARTS.items()}


@pytest.fixture
def databases(tmp_path):
    dbs = Databases(tmp_path)
    try:
        yield dbs
    finally:
        dbs.drop()


def step_env(databases: Databases, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMC_")}
    env["VMC_DATA_DIR"] = str(tmp_path)
    env.update({f"VMC_{name.upper()}_DATABASE_URL": databases.url(name) for name in PARTS})
    return env


def start_migrate(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "migrate", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def applied_by(output: str) -> dict[str, list[int]]:
    """`vmc migrate`'s lines, `<part>: applied 1, 2` or `<part>: up to date`, as versions per part."""
    result = {}
    for line in output.splitlines():
        name, _, what = line.partition(": ")
        result[name] = [int(v) for v in what.removeprefix("applied ").split(", ")] if what.startswith("applied") else []
    return result


async def recorded(url: str) -> list[int]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return [row[0] for row in await conn.execute(text("SELECT version FROM schema_migrations ORDER BY version"))]
    finally:
        await engine.dispose()


async def test_vmc_migrate_applies_every_part_once_and_a_second_run_finds_nothing_to_do(databases, tmp_path):
    env = step_env(databases, tmp_path)
    first = start_migrate(env)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert applied_by(out) == VERSIONS
    again = start_migrate(env)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert applied_by(out) == {name: [] for name in PARTS}
    for name in PARTS:
        assert await recorded(env[f"VMC_{name.upper()}_DATABASE_URL"]) == VERSIONS[name]


async def test_two_vmc_migrate_at_once_apply_each_migration_once(databases, tmp_path):
    env = step_env(databases, tmp_path)
    runs = [start_migrate(env), start_migrate(env)]  # two replicas of the step, side by side
    results = [run.communicate(timeout=180) for run in runs]
    for run, (_, err) in zip(runs, results):
        assert run.returncode == 0, err
    outputs = [applied_by(out) for out, _ in results]
    for name in PARTS:
        together = outputs[0][name] + outputs[1][name]
        assert sorted(together) == VERSIONS[name], f"{name}: {outputs}"  # each version by one of them only
        assert await recorded(env[f"VMC_{name.upper()}_DATABASE_URL"]) == VERSIONS[name]


def get_ready(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def test_a_part_that_does_not_migrate_waits_unready_for_vmc_migrate_then_starts(databases, broker, tmp_path):
    env = step_env(databases, tmp_path)
    port = free_port()
    registry = start_uvicorn(PARTS["registry"].app, port, {
        **env, "VMC_MIGRATE_ON_START": "false", "VMC_REGISTRY_PORT": str(port),
        "VMC_KAFKA_BOOTSTRAP": broker.bootstrap, "VMC_KAFKA_IDEMPOTENCE": "true" if broker.idempotence else "false",
    }, tmp_path / "registry.log")
    try:
        url = f"http://127.0.0.1:{port}"

        def not_ready_answer():
            try:
                status, body = get_ready(url + "/ready")
            except (urllib.error.URLError, ConnectionError):
                return None  # not listening yet
            return (status, body) if "schema" in body.get("checks", {}) else None

        status, body = wait_for(not_ready_answer, 60, "/ready answering with the schema check")
        assert status == 503 and body["checks"]["schema"] is False
        versions = ", ".join(map(str, VERSIONS["registry"]))
        assert f"migration(s) {versions} not applied" in body["detail"] and "vmc migrate" in body["detail"]
        assert registry.poll() is None  # waiting, not dead

        step = start_migrate(env, "--part", "registry")
        out, err = step.communicate(timeout=120)
        assert step.returncode == 0 and out.strip() == f"registry: applied {versions}", err
        status, body = wait_for(lambda: (r := get_ready(url + "/ready"))[0] == 200 and r, 60,
                                "/ready 200 once the schema is current")
        assert body["status"] == "ready"
    finally:
        stop(registry)


# Only Tansu refuses idempotent producers; Apache Kafka (external or testcontainers) has nothing to refuse.
@pytest.mark.skipif(broker_kind() != "tansu", reason="this broker takes idempotent producers: nothing to refuse")
def test_a_broker_refusing_the_parts_requests_is_named_by_ready_and_the_log(databases, broker, tmp_path):
    """Issue 18, bad input: a broker that answers but refuses (here an idempotent producer on Tansu) is not
    'ready': /ready is a 503 naming the refusal for the outbox relay and the consumer, and the log says it."""
    assert not broker.idempotence
    env = step_env(databases, tmp_path)
    port = free_port()
    log_file = tmp_path / "activities.log"
    activities = start_uvicorn(PARTS["activities"].app, port, {
        **env, "VMC_ACTIVITIES_PORT": str(port), "VMC_KAFKA_BOOTSTRAP": broker.bootstrap, "VMC_KAFKA_IDEMPOTENCE": "true",
    }, log_file)
    try:
        def refused():
            try:
                status, body = get_ready(f"http://127.0.0.1:{port}/ready")
            except (urllib.error.URLError, ConnectionError):
                return None
            detail = body.get("detail", "")
            return (status, body) if "relay" in detail and "consumer" in detail else None

        status, body = wait_for(refused, 60, "/ready naming the refusals of the relay and the consumer")
        assert status == 503 and body["checks"]["broker"] is True  # reachable: it answers, and refuses
        assert body["checks"]["outbox"] is False and body["checks"]["consumers"] is False
        assert "the broker refused the outbox relay's producer" in body["detail"]
        assert "VMC_KAFKA_IDEMPOTENCE" in body["detail"]
        assert "the broker refused consumer" in body["detail"]
        wait_for(lambda: "the broker refused the outbox relay's producer" in log_file.read_text(), 10,
                 "the refusal in the log")
    finally:
        stop(activities)


@pytest.mark.dialect_free
def test_make_run_names_the_part_that_failed_to_start_and_why(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMC_")}
    env.update({f"VMC_{name.upper()}_PORT": str(free_port()) for name in [*PARTS, "broker"]})
    env.update(VMC_DATA_DIR=str(tmp_path), VMC_ACTIVITIES_REGISTRY_TIMEOUT_S="soon")  # malformed: activities dies
    launcher = subprocess.run([sys.executable, "-m", "deploy.embedded"], env=env, capture_output=True, text=True,
                              timeout=180)
    assert launcher.returncode == 1
    assert "error: activities did not start" in launcher.stderr
    # The reason itself, from the end of activities' log, not only where the logs are.
    assert "registry_timeout_s" in launcher.stderr and "Input should be a valid number" in launcher.stderr


@pytest.mark.dialect_free
def test_vmc_topics_creates_the_event_and_dead_letter_topics_once(broker, tmp_path):
    from aiokafka.admin import AIOKafkaAdminClient

    from deploy.production import topic_names

    env = {k: v for k, v in os.environ.items() if not k.startswith("VMC_")}
    env.update(VMC_DATA_DIR=str(tmp_path), VMC_KAFKA_BOOTSTRAP=broker.bootstrap)
    command = [sys.executable, "-m", "gateway.cli", "topics", "--partitions", "2", "--replication-factor", "1"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and first.stdout.startswith("topics created: "), first.stderr

    async def existing() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    assert set(topic_names()) <= asyncio.run(existing())
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "topics created: none (all exist)", again.stderr
