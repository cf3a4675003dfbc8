"""The real broker round-trips keyed records; equal keys share a partition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _consume_all(
    bootstrap: str, topic: str, group: str, expected: int, deadline_s: float = 60.0
) -> list[tuple[int, bytes | None, bytes | None]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    await consumer.start()
    got: list[tuple[int, bytes | None, bytes | None]] = []
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while len(got) < expected and loop.time() < end:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                got.extend((tp.partition, m.key, m.value) for m in msgs)
    finally:
        await consumer.stop()
    return got


def test_round_trip_keyed_records(
    kafka_bootstrap: str, topic_factory: Callable[..., str], group_id: str
) -> None:
    topic = topic_factory(partitions=4, prefix="roundtrip")
    records = [
        (f"resource-{i % 25}".encode(), f'{{"n":{i}}}'.encode()) for i in range(500)
    ]
    asyncio.run(_produce(kafka_bootstrap, topic, records))
    got = asyncio.run(_consume_all(kafka_bootstrap, topic, group_id, len(records)))

    assert sorted((k, v) for _, k, v in got) == sorted(records)
    partitions_by_key: dict[bytes | None, set[int]] = {}
    for partition, key, _ in got:
        partitions_by_key.setdefault(key, set()).add(partition)
    assert all(len(p) == 1 for p in partitions_by_key.values())
    assert len({p for ps in partitions_by_key.values() for p in ps}) > 1  # keys spread out
    # order within one key is production order
    for key in partitions_by_key:
        ns = [int(v.decode().split(":")[1].rstrip("}")) for _, k, v in got if k == key and v]
        assert ns == sorted(ns)
