"""The Kafka broker as the services use it, with every Tansu workaround in one place.

What is here and why:
- clients (`make_producer`, `make_consumer`): Tansu refuses idempotent producers (off by default,
  `VMC_KAFKA_IDEMPOTENCE=true` for Apache Kafka) and answers ListOffsets(LATEST) wrongly; no client
  of ours asks the broker to create a topic by naming it (`_forbid_topic_auto_creation`);
- topics (`ensure_topics`, `ensure_topics_forever`) and the readiness probe (`broker_reachable`);
- noticing a broker that lost its log (`LogWatch`): the outbox relay remembers the cluster id and the
  highest offset the broker acknowledged per partition, and compares them with what the cluster holds;
- consumer-group behaviour of Tansu the consumer runtime guards against (`Membership`,
  `PartitionCounts`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiokafka.client
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import BrokerResponseError, TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, select

from shared.settings import CommonSettings

log = logging.getLogger(__name__)


class _MetadataWithoutTopicCreation(MetadataRequest):
    """A metadata request that never creates the topics it names."""

    def __init__(self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False):
        super().__init__(topics, allow_auto_topic_creation)


def _forbid_topic_auto_creation() -> None:
    """aiokafka asks the broker to create every topic it requests metadata for. A broker that lost its
    log then re-creates a topic the moment any consumer or producer looks it up, with the broker's
    default partition count (Tansu: 4, not ours: the keys of an aggregate then move to another
    partition). Topics are created only by `ensure_topics`, with the configured count. aiokafka has no
    option for it: its client module's request class is replaced, for this process's clients."""
    aiokafka.client.MetadataRequest = _MetadataWithoutTopicCreation


def make_producer(settings: CommonSettings, client_id: str) -> AIOKafkaProducer:
    _forbid_topic_auto_creation()
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
    _forbid_topic_auto_creation()
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        # Tansu's ListOffsets(LATEST) is wrong, and a new group must see the whole history anyway.
        auto_offset_reset="earliest",
        max_poll_records=500,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(100, min(3_000, settings.kafka_session_timeout_ms // 3)),
        request_timeout_ms=15_000,
        metadata_max_age_ms=5_000,
    )


# A consumer without an assignment for this many session timeouts is taken for stuck: it starts over
# as a new member and /ready says so (shared.consumer). A join may take up to about two: on Tansu the
# join of a member waits about half of one, after a restarted member's predecessor expired (a member of
# generation 0 never leaves); on Apache Kafka a rebalance waits up to one for the members to rejoin.
JOIN_SESSIONS = 3


def join_deadline(settings: CommonSettings) -> float:
    """Seconds a consumer may be without a partition assignment before it is taken for stuck."""
    return JOIN_SESSIONS * settings.kafka_session_timeout_ms / 1000


def refusal(exc: BaseException, what: str, starting: bool = False) -> str | None:
    """Why the broker refused `what`'s request, or None when `exc` is not a refusal: a broker that answers
    with a non-retriable error (unsupported, not authorised, invalid) gets the same answer every time,
    so /ready says so instead of calling the part ready while it retries for ever. An unreachable
    broker, a timeout or a leader moving are not refusals."""
    if not isinstance(exc, BrokerResponseError) or exc.retriable:
        return None
    reason = f"the broker refused {what}: {type(exc).__name__}"
    if starting:  # InitProducerId: an idempotent producer on a broker without it (Tansu)
        reason += " (when starting: is VMC_KAFKA_IDEMPOTENCE right for this broker?)"
    return reason


KEPT_FOR_EVER = {"retention.ms": "-1", "cleanup.policy": "delete"}


async def ensure_topics(settings: CommonSettings, topics: list[str], partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet (consumers must not wait on a topic nobody wrote to),
    with `partitions` each (default: VMC_KAFKA_PARTITIONS) and kept for ever, as `vmc topics` makes
    them (analytics rebuilds by replaying from the start; a broker's default retention, 7 days on
    Apache Kafka, would silently cut the replay short); returns those it created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        count = partitions or settings.kafka_partitions
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            try:
                await admin.create_topics([
                    NewTopic(t, num_partitions=count, replication_factor=1, topic_configs=KEPT_FOR_EVER)
                    for t in missing
                ])
            except TopicAlreadyExistsError:
                pass
        return missing
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


@dataclass
class ClusterView:
    """What the cluster says about itself: its id and each topic's partition count."""

    cluster_id: str | None
    partitions: dict[str, int]


async def cluster_view(settings: CommonSettings, timeout_ms: int = 2_000) -> ClusterView:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        topics = await admin.describe_topics()
    finally:
        await admin.close()
    return ClusterView(cluster.get("cluster_id"),
                       {t["topic"]: len(t["partitions"]) for t in topics if t["error_code"] == 0})


async def broker_reachable(settings: CommonSettings) -> bool:
    try:
        await cluster_view(settings)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable" for /ready
        return False


async def high_watermarks(settings: CommonSettings, offsets: dict[TopicPartition, int],
                          timeout_ms: int = 1_500) -> dict[TopicPartition, int]:
    """Each partition's high watermark, read by fetching at the given offset (a fetch answers it
    right; Tansu's ListOffsets(LATEST) does not). A partition the broker did not answer for is left out."""
    _forbid_topic_auto_creation()
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                              auto_offset_reset="earliest", request_timeout_ms=timeout_ms * 2)
    await reader.start()
    try:
        reader.assign(list(offsets))
        for tp, offset in offsets.items():
            reader.seek(tp, offset)
        marks: dict[TopicPartition, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while len(marks) < len(offsets) and loop.time() < deadline:
            await reader.getmany(timeout_ms=200)
            marks = {tp: hw for tp in offsets if (hw := reader.highwater(tp)) is not None}
        return marks
    finally:
        await reader.stop()


class RelayState(SQLModel, table=True):
    """What a service's database remembers about the broker it publishes to (see `LogWatch`)."""

    __tablename__ = "relay_state"

    name: str = Field(primary_key=True, max_length=100)
    value: str = Field(max_length=200)


CLUSTER_ID = "cluster_id"  # RelayState.name of the cluster id
OFFSET = "offset:"  # RelayState.name prefix of a partition's highest acknowledged offset: offset:<topic>:<partition>


def _offset_name(tp: TopicPartition) -> str:
    return f"{OFFSET}{tp.topic}:{tp.partition}"


class LogWatch:
    """Notices that the broker lost the log this service published to, without anyone saying so.

    Kafka offsets only grow: a partition whose log holds nothing at or after the highest offset the
    broker once acknowledged to us (its high watermark is not above it), an acknowledgement at or
    below it, a topic or partition we published to that is gone, or another cluster id, each means the
    log is not the one we published to. The marks live in the service's database (`RelayState`), so a
    loss that happened while the service was stopped is noticed at its start too."""

    def __init__(self, settings: CommonSettings, topics: list[str], save_interval: float = 1.0):
        self.settings = settings
        self.topics = topics  # the service's topics: created here when missing
        self.marks: dict[TopicPartition, int] = {}
        self.cluster_id: str | None = None
        self._changed: dict[str, str] = {}
        self._save_interval = save_interval
        self._saved_at = 0.0
        # The marks as the previous look at the cluster found them: those are compared with the high
        # watermarks, never the marks of this instant (an acknowledgement may come a moment before the
        # broker's high watermark moves, and the relay raises the marks while the cluster is read).
        self._settled: dict[TopicPartition, int] = {}

    async def load(self, session: AsyncSession) -> None:
        self.marks, self.cluster_id, self._changed = {}, None, {}
        for state in (await session.execute(select(RelayState))).scalars():
            if state.name == CLUSTER_ID:
                self.cluster_id = state.value
            elif state.name.startswith(OFFSET):
                topic, partition = state.name[len(OFFSET):].rsplit(":", 1)
                self.marks[TopicPartition(topic, int(partition))] = int(state.value)
        self._settled = dict(self.marks)

    def acknowledged(self, tp: TopicPartition, offset: int) -> bool:
        """Record an acknowledged offset; False when it is not above the partition's mark (lost log)."""
        if offset <= self.marks.get(tp, -1):
            return False
        self.marks[tp] = offset
        self._changed[_offset_name(tp)] = str(offset)
        return True

    async def save(self, session: AsyncSession, force: bool = False) -> None:
        """Write what moved (in the caller's transaction), at most once every `save_interval` seconds
        unless `force`d: a statement per published batch is a cost at one write a batch, and a mark
        saved a moment late is only lower than the true one (a lost log starts again below it)."""
        if not self._changed or (not force and time.monotonic() - self._saved_at < self._save_interval):
            return
        changed, self._changed = self._changed, {}
        await _upsert(session, changed)
        self._saved_at = time.monotonic()

    async def forget(self, session: AsyncSession) -> None:
        """Start again on the cluster as it is now (in the caller's transaction: the re-publication's)."""
        await session.execute(delete(RelayState).where(RelayState.name.startswith(OFFSET)))
        self.marks, self._changed, self._settled = {}, {}, {}
        if self.cluster_id:
            await _upsert(session, {CLUSTER_ID: self.cluster_id})

    async def lost(self, deep: bool = True) -> str | None:
        """Why the cluster no longer holds what this service published to it (None: it does); `deep`
        also reads the marked partitions' high watermarks (a fetch). Also creates this service's missing
        topics, so that nothing is published to a topic that does not exist (Tansu acknowledges such a
        record, and drops it)."""
        marks, self._settled = self._settled, dict(self.marks)
        view = await cluster_view(self.settings)
        missing = [t for t in self.topics if t not in view.partitions]
        if missing:
            await ensure_topics(self.settings, missing)
        if view.cluster_id and view.cluster_id != self.cluster_id:
            known, self.cluster_id = self.cluster_id, view.cluster_id
            self._changed[CLUSTER_ID] = view.cluster_id
            if known:
                return f"the cluster id changed from {known} to {view.cluster_id}"
        gone = sorted({f"{tp.topic}/{tp.partition}" for tp in marks if tp.partition >= view.partitions.get(tp.topic, 0)})
        if gone:
            return f"partition(s) {', '.join(gone)} no longer exist"
        behind = await self._behind(marks) if deep else []
        if behind:
            return f"partition(s) {', '.join(behind)} end below the offsets the broker acknowledged before"
        return None

    async def _behind(self, marks: dict[TopicPartition, int]) -> list[str]:
        if not marks:
            return []
        highs = await high_watermarks(self.settings, marks)
        return [f"{tp.topic}/{tp.partition}" for tp, high in sorted(highs.items()) if high <= marks[tp]]


async def _upsert(session: AsyncSession, values: dict[str, str]) -> None:
    if not values:
        return
    insert = postgresql_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    statement = insert(RelayState).values([{"name": k, "value": v} for k, v in values.items()])
    await session.execute(statement.on_conflict_do_update(index_elements=["name"],
                                                          set_={"value": statement.excluded.value}))


class Membership(ConsumerRebalanceListener):
    """Counts rebalances so that an offset read before one is never committed after it, and knows
    since when the consumer has been without an assignment (joining, or rejoining after a rebalance
    began).

    After a rebalance the partition may belong to another member, or (Tansu on memory storage
    restarted empty) the offset may belong to a log that no longer exists: aiokafka retries a
    commit with the member id it has *now*, and committing such an offset would skip as many new
    messages. Not committing only means a redelivery, which the processed-events record absorbs.

    `joining_since` spans the consumer's clients: a client started over because its join took too
    long does not restart the count (/ready reports the whole wait). `on_assigned` is called with each
    assignment (the consumer's `PartitionCounts` notes the partition counts it was made from)."""

    def __init__(self, on_assigned: Callable[[set], None] | None = None) -> None:
        self.generation = 0
        self.pending: asyncio.Future | None = None
        self.joining_since: float | None = time.monotonic()  # monotonic time; None once assigned
        self._on_assigned = on_assigned

    def joining(self) -> None:
        """The consumer (a new client of it) is joining its group: unassigned from now, unless it was already."""
        if self.joining_since is None:
            self.joining_since = time.monotonic()

    def unassigned_for(self) -> float:
        """Seconds without an assignment so far (0 when assigned)."""
        return 0.0 if self.joining_since is None else time.monotonic() - self.joining_since

    async def on_partitions_revoked(self, revoked) -> None:
        self.generation += 1
        self.joining()
        if self.pending is not None:
            self.pending.cancel()

    async def on_partitions_assigned(self, assigned) -> None:
        # An empty assignment counts: more members than partitions leave some with none, by design.
        self.joining_since = None
        if self._on_assigned is not None:
            self._on_assigned(set(assigned))


class PartitionCounts:
    """Notices when a subscribed topic's partition count changed since the consumer's assignment was
    made: an empty broker re-created the topic, or created it only after the assignment (a consumer
    that joined a broker back empty before the outbox relay re-created the topics got no partition of
    them).

    Tansu hands a member that rejoins in the same generation its previous assignment, so the new
    partitions would never be read (the consumer reported ready and read nothing); `check` raises, and
    the consumer restarts as a new member, which gets a fresh assignment. `assigned` notes the counts
    at each assignment (a topic absent then counts 0); a topic that disappears is not a change (it is
    being re-created)."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.known: dict[str, int] = {}

    def assigned(self, consumer: AIOKafkaConsumer) -> None:
        self.known = {topic: len(consumer.partitions_for_topic(topic) or ()) for topic in self.topics}

    def check(self, consumer: AIOKafkaConsumer) -> None:
        for topic in self.topics:
            count = len(consumer.partitions_for_topic(topic) or ())
            if count and topic in self.known and self.known[topic] != count:
                raise RuntimeError(f"{topic} now has {count} partitions, not {self.known[topic]} as when this "
                                   "consumer's partitions were assigned: rejoining as a new member")
