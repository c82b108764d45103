"""Topics a service makes for itself (the embedded default, or a broker where `vmc topics` did not run)
keep their events for ever, like those `vmc topics` makes: analytics rebuilds by replaying from the start."""
from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.broker import ensure_topics
from shared.settings import CommonSettings
from tests.harness import unique

# The same on any database: run in the PostgreSQL pass only (pyproject.toml, Makefile).
pytestmark = pytest.mark.dialect_free


async def test_a_topic_a_service_creates_keeps_every_event(broker):
    topic = unique("vmc.retention")
    settings = CommonSettings(kafka_bootstrap=broker.bootstrap)
    assert await ensure_topics(settings, [topic], partitions=2) == [topic]
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        partitions = (await admin.describe_topics([topic]))[0]["partitions"]
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for resource in described.resources for entry in resource[4]}
    assert configs.get("retention.ms") == "-1", configs
    assert len(partitions) == 2
