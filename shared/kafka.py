"""Kafka clients configured from settings (Tansu needs idempotence off; Apache Kafka wants it on)."""
from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.settings import CommonSettings


def make_producer(settings: CommonSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks=settings.kafka_acks if settings.kafka_acks in ("all", "0") else int(settings.kafka_acks),
        enable_idempotence=settings.kafka_idempotence,
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
