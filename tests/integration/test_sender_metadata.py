"""BatchSender keeps its topic in the producer's metadata while a batch waits to be sent.

aiokafka's producer asks the broker for the metadata of the topics it *tracks* only
(``client._topics``, filled by ``_wait_on_metadata`` when a topic is missing from its view),
and each answer *replaces* its view (``ClusterMetadata.update_metadata``). A topic the
producer knew from an earlier full fetch but never tracked vanishes from the view as soon as
a refresh asks about other topics, e.g. a send to a topic that does not exist yet (the
worker's rejects topic racing its creation). A batch of the vanished topic still waiting in
the accumulator then has no leader for ever: the sender refreshes the tracked topics only, so
its delivery is never acknowledged (the worker stalled for good: "sends unacknowledged").
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from agents.sender import BatchSender

LINGER_MS = 1000
"""The accumulator holds a submitted batch this long: the window in which the producer's
metadata is narrowed to another topic (widened on purpose; a busy CPU widens it too)."""


async def _narrowed_while_lingering(bootstrap: str, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaProducer

    producer: Any = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=LINGER_MS)
    await producer.start()
    try:
        client = producer.client
        await client.force_metadata_update()  # nothing tracked yet: a full fetch
        assert client.cluster.partitions_for_topic(topic), "the topic is in the full view"
        sender = BatchSender(lambda: producer, topic, 2)
        for p in range(2):
            await sender.add(b"k", b"v", p)
        pending = await sender.submit()  # the batches linger in the accumulator
        # A send to a topic that does not exist yet: the producer now tracks it, and its
        # metadata refresh answers for the tracked topics only.
        missing = f"missing-{uuid.uuid4().hex[:8]}"
        client.add_topic(missing)
        await client.force_metadata_update()
        return await asyncio.wait_for(sender.wait(pending), 15)
    finally:
        await producer.stop()


def test_batches_are_delivered_when_the_metadata_narrows_to_another_topic(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
) -> None:
    topic = topic_factory(partitions=2, prefix="narrow")
    acked = asyncio.run(_narrowed_while_lingering(kafka_bootstrap, topic))
    assert acked == {0: 0, 1: 0}


async def _topic_partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        return {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}
    finally:
        await admin.close()


def test_preflight_creates_the_output_topics_before_the_worker_starts(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Any,
) -> None:
    """The agents send to the usage and rejects topics from their first batch: they exist
    (``partitions`` partitions, every one with a leader) before Faust starts, instead of
    being created by a task that races those sends."""
    from agents import preflight
    from metering.settings import Settings

    app_id = unique_name("pre")
    settings = Settings(broker=kafka_bootstrap, app_id=app_id, partitions=3,
                        usage_topic=f"{app_id}-usage", rejects_topic=f"{app_id}-rejected",
                        events_topic=f"{app_id}-events", data_dir=tmp_path / "data")
    outputs = [settings.usage_topic, settings.rejects_topic]
    assert asyncio.run(_topic_partitions(kafka_bootstrap, outputs)) == {}
    asyncio.run(preflight.check(settings, {settings.events_topic: {}}))
    assert asyncio.run(_topic_partitions(kafka_bootstrap, outputs)) == dict.fromkeys(outputs, 3)
    asyncio.run(preflight.check(settings, {settings.events_topic: {}}))  # again: kept
    assert asyncio.run(_topic_partitions(kafka_bootstrap, outputs)) == dict.fromkeys(outputs, 3)
