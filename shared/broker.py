"""The Kafka broker as the services use it, with every Tansu workaround in one place.

What is here and why:
- clients (`make_producer`, `make_consumer`): Tansu refuses idempotent producers (off by default,
  `VMC_KAFKA_IDEMPOTENCE=true` for Apache Kafka) and answers ListOffsets(LATEST) wrongly;
- topics (`ensure_topics`, `ensure_topics_forever`) and the readiness probe (`broker_reachable`);
- the broker epoch (`is_new_epoch`): the embedded launcher runs Tansu on memory storage, so a broker
  it starts holds nothing; it sets a new `VMC_BROKER_EPOCH` each time, and the outbox relay publishes
  its retained rows again when the epoch differs from the one its database last published to;
- consumer-group behaviour of Tansu the consumer runtime guards against (`Membership`,
  `PartitionCounts`).
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from shared.settings import CommonSettings

log = logging.getLogger(__name__)


def make_producer(settings: CommonSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks=settings.kafka_acks if settings.kafka_acks in ("all", "0") else int(settings.kafka_acks),
        enable_idempotence=settings.kafka_idempotence,  # Tansu rejects idempotent producers
        linger_ms=2,
        request_timeout_ms=10_000,
        retry_backoff_ms=200,
    )


def make_consumer(settings: CommonSettings, group_id: str, topics: list[str]) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        # Tansu's ListOffsets(LATEST) is wrong, and a new group must see the whole history anyway.
        auto_offset_reset="earliest",
        max_poll_records=500,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(100, min(3_000, settings.kafka_session_timeout_ms // 3)),
        request_timeout_ms=15_000,
        metadata_max_age_ms=5_000,
    )


async def ensure_topics(settings: CommonSettings, topics: list[str], partitions: int = 3) -> None:
    """Create topics that do not exist yet (consumers must not wait on a topic nobody wrote to)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def ensure_topics_forever(settings: CommonSettings, topics: list[str]) -> None:
    """`ensure_topics`, retried with a bounded backoff until the broker answers."""
    delay = 0.2
    while True:
        try:
            await ensure_topics(settings, topics)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # broker away at start-up: keep trying, the service still serves
            log.warning("cannot create topics yet", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)


async def broker_reachable(settings: CommonSettings) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=2_000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable" for /ready
        return False
    finally:
        await admin.close()


class RelayState(SQLModel, table=True):
    """What a service's database remembers about the broker: the epoch it last published to."""

    __tablename__ = "relay_state"

    name: str = Field(primary_key=True, max_length=100)
    value: str = Field(max_length=200)


EPOCH = "broker_epoch"  # RelayState.name of the epoch row


async def is_new_epoch(session: AsyncSession, epoch: str) -> bool:
    """Whether the broker `epoch` names is new to this database (it may hold none of what was
    published before). The new epoch is recorded in `session`: the caller republishes in the same
    transaction and commits both, so a crash in between republishes again at the next start."""
    state = await session.get(RelayState, EPOCH)
    if state is not None and state.value == epoch:
        return False
    if state is None:
        session.add(RelayState(name=EPOCH, value=epoch))
    else:
        state.value = epoch
    return True


class Membership(ConsumerRebalanceListener):
    """Counts rebalances so that an offset read before one is never committed after it.

    After a rebalance the partition may belong to another member, or (Tansu on memory storage
    restarted empty) the offset may belong to a log that no longer exists: aiokafka retries a
    commit with the member id it has *now*, and committing such an offset would skip as many new
    messages. Not committing only means a redelivery, which the processed-events record absorbs."""

    def __init__(self) -> None:
        self.generation = 0
        self.pending: asyncio.Future | None = None

    async def on_partitions_revoked(self, revoked) -> None:
        self.generation += 1
        if self.pending is not None:
            self.pending.cancel()

    async def on_partitions_assigned(self, assigned) -> None:
        return None


class PartitionCounts:
    """Notices when a topic's partition count changed (an empty broker re-created the topic).

    Tansu hands a member that rejoins in the same generation its previous assignment, so the new
    partitions would never be read; `check` raises, and the consumer restarts as a new member, which
    gets a fresh assignment."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.known: dict[str, int] = {}

    def check(self, consumer: AIOKafkaConsumer) -> None:
        for topic in self.topics:
            count = len(consumer.partitions_for_topic(topic) or ())
            if count and self.known.get(topic, count) != count:
                raise RuntimeError(f"{topic} now has {count} partitions, not {self.known[topic]}: rejoining as a new member")
            if count:
                self.known[topic] = count
