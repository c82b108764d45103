"""What the production image runs (`vmc serve PART`, `vmc migrate`, `vmc topics`): one part, or a one-shot step.

Every part is found from the service manifest plus the gateway: a service's settings class and
migrations are its package's `settings.py` and `migrations.py` (`MIGRATIONS`), as every service has
them. Settings are checked before anything starts: a missing, malformed or unsafe one ends the
command with one line naming its variable (exit code 1).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib import import_module

from shared.manifest import SERVICES
from shared.settings import ServiceSettings, load_settings


@dataclass(frozen=True)
class Part:
    name: str
    app: str  # import string of its app factory
    package: str  # where its settings.py and migrations.py are

    def settings_class(self) -> type[ServiceSettings]:
        module = import_module(f"{self.package}.settings")
        found = [v for v in vars(module).values()
                 if isinstance(v, type) and issubclass(v, ServiceSettings) and v.__module__ == module.__name__]
        (cls,) = [c for c in found if not any(other is not c and issubclass(other, c) for other in found)]
        return cls

    def migrations(self):
        return import_module(f"{self.package}.migrations").MIGRATIONS


PARTS: dict[str, Part] = {
    **{s.name: Part(s.name, s.app, s.app.partition(":")[0].rpartition(".")[0]) for s in SERVICES},
    "gateway": Part("gateway", "gateway.app:create_app", "gateway"),
}


# After SIGTERM, how long the requests in flight have to finish (uvicorn stops accepting at once).
# Then the part stops its consumers (the batch in hand committed, the group left) and flushes its
# outbox relay (a few seconds at most). All of it fits in the orchestrators' grace periods: compose's
# stop_grace_period (20 s) and Kubernetes' terminationGracePeriodSeconds (30 s, of which the preStop
# pause takes 5); tests/unit/test_stop_budget.py checks the sums.
GRACEFUL_SHUTDOWN_SECONDS = 8


def serve(part: str, host: str = "0.0.0.0") -> int:
    """Run one part under uvicorn (deploy/server.py) on its `VMC_<PART>_PORT` until SIGTERM."""
    import uvicorn

    from deploy.processes import GATEWAY_PROTOCOL, SERVICE_KEEP_ALIVE_SECONDS
    from deploy.server import serve as run

    entry = PARTS[part]
    settings = load_settings(entry.settings_class(), f"vmc serve {part}")
    gateway = part == "gateway"
    run(uvicorn.Config(entry.app, factory=True, host=host, port=settings.port, loop="uvloop", access_log=False,
                       http=GATEWAY_PROTOCOL if gateway else "httptools",
                       timeout_keep_alive=5 if gateway else SERVICE_KEEP_ALIVE_SECONDS,
                       timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))
    return 0


async def _migrate(parts: list[str]) -> list[tuple[str, list[int]]]:
    from shared.db import make_engine, migrate

    # Every part's settings first: a broken one stops the step before any database is touched.
    settings = {name: load_settings(PARTS[name].settings_class(), "vmc migrate") for name in parts}
    done = []
    for name in parts:
        engine = make_engine(settings[name].resolved_database_url(), pool_size=1, max_overflow=0)
        try:
            # shared.db.migrate holds an advisory lock on PostgreSQL: replicas or steps running at
            # once take turns, and the later ones find nothing left to do.
            done.append((name, await migrate(engine, PARTS[name].migrations())))
        finally:
            await engine.dispose()
    return done


def migrate_all(parts: list[str] | None = None) -> int:
    """Apply every part's pending migrations; prints one line per part."""
    for name, applied in asyncio.run(_migrate(parts or list(PARTS))):
        print(f"{name}: " + (f"applied {', '.join(map(str, applied))}" if applied else "up to date"), flush=True)
    return 0


@dataclass(frozen=True)
class TopicPlan:
    partitions: int
    replication_factor: int
    # -1: kept for ever. Analytics has no state of its own worth a backup: a new replica, or one
    # whose store was lost, rebuilds by reading the topics from offset 0, so the events must stay.
    retention_ms: int = -1


def topic_names() -> list[str]:
    """The event topics of the manifest (each publisher's) and the dead-letter topics of its consumers."""
    from shared.events import dead_letter_topic

    events = [s.topic for s in SERVICES if s.topic]
    consumers = sorted({c.name for c in consumer_specs()})
    return [*events, *(dead_letter_topic(c) for c in consumers)]


def consumer_specs():
    """The consumer groups of every service (from its app, built without starting it)."""
    specs = []
    for s in SERVICES:
        app = import_module(s.app.partition(":")[0]).create_app(PARTS[s.name].settings_class().model_construct())
        specs.extend(app.state.spec.consumers)
    return specs


async def _create_topics(plan: TopicPlan) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from shared.settings import CommonSettings

    settings = load_settings(CommonSettings, "vmc topics")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = {"retention.ms": str(plan.retention_ms), "cleanup.policy": "delete"}
        if plan.replication_factor > 1:
            # acks=all then waits for two copies: a broker lost never loses an acknowledged event.
            configs["min.insync.replicas"] = "2"
        missing = [NewTopic(t, plan.partitions, plan.replication_factor, topic_configs=configs)
                   for t in topic_names() if t not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another step created them meanwhile
                pass
        return [t.name for t in missing]
    finally:
        await admin.close()


def create_topics(plan: TopicPlan) -> int:
    """Create the topics that do not exist yet; existing ones are left as they are (more partitions
    would move keys to other partitions and break the per-aggregate order of their events)."""
    created = asyncio.run(_create_topics(plan))
    print("topics created: " + (", ".join(created) if created else "none (all exist)"), flush=True)
    return 0
