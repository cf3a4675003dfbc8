"""Small real-Kafka helpers for integration tests: produce, consume with deadlines, dump."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.kafkaclient import client_options


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    partition: int | None = None,
) -> int:
    """Produce (key, value) records in order (idempotent producer); return how many."""

    async def run() -> int:
        producer = AIOKafkaProducer(
            **client_options(bootstrap), acks="all", enable_idempotence=True, linger_ms=5,
            max_batch_size=256 * 1024,
        )
        await producer.start()
        n = 0
        try:
            futures = []
            for key, value in records:
                futures.append(await producer.send(topic, value, key=key, partition=partition))
                n += 1
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return n

    return asyncio.run(run())


async def _wait_topic(bootstrap: str, topic: str, deadline_s: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        end = time.monotonic() + deadline_s
        while topic not in await admin.list_topics():
            if time.monotonic() > end:
                raise AssertionError(f"topic {topic} did not appear within {deadline_s}s")
            await asyncio.sleep(0.2)  # poll with a deadline
    finally:
        await admin.close()


def consume(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Any]], bool],
    deadline_s: float = 120.0,
) -> list[Any]:
    """Read ``topic`` from the beginning (no group) until ``done(messages)`` or the deadline.

    Returns the aiokafka messages read. Never waits past the deadline.
    """

    async def run() -> list[Any]:
        await _wait_topic(bootstrap, topic, deadline_s)
        consumer = AIOKafkaConsumer(
            topic, **client_options(bootstrap), group_id=None, auto_offset_reset="earliest",
            enable_auto_commit=False, metadata_max_age_ms=1000,  # see topics created later
        )
        await consumer.start()
        got: list[Any] = []
        end = time.monotonic() + deadline_s
        try:
            while time.monotonic() < end:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    got.extend(msgs)
                if done(got):
                    break
        finally:
            await consumer.stop()
        return got

    return asyncio.run(run())


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> end offset of ``topic``."""

    async def run() -> dict[int, int]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**client_options(bootstrap))
        await admin.start()
        try:
            meta = await admin.describe_topics([topic])
        finally:
            await admin.close()
        parts = sorted(p["partition"] for p in meta[0]["partitions"])
        consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(run())


def dump_kcat(bootstrap: str, topic: str, deadline_s: float = 60.0) -> list[bytes]:
    """Every record of ``topic`` as a kcat ``-J`` envelope line (what operators dump)."""
    ends = end_offsets(bootstrap, topic)
    total = sum(ends.values())
    msgs = consume(bootstrap, topic, lambda got: len(got) >= total, deadline_s)
    # interleaved by record time, as a live consumer (or kcat) sees them; per-partition
    # order is kept because a single producer's CreateTime only grows within a partition
    msgs.sort(key=lambda m: (m.timestamp, m.partition, m.offset))
    return [
        orjson.dumps({
            "topic": m.topic, "partition": m.partition, "offset": m.offset,
            "tstype": "create", "ts": m.timestamp, "broker": -1,
            "key": m.key.decode() if m.key is not None else None,
            "payload": m.value.decode("utf-8", "replace") if m.value is not None else None,
        })
        for m in msgs
    ]


def usage_rows(messages: list[Any]) -> dict[str, dict[str, Any]]:
    """Usage-topic messages -> rows by interval_id; asserts repeats carry equal content."""
    rows: dict[str, dict[str, Any]] = {}
    for m in messages:
        row = orjson.loads(m.value)
        assert m.key.decode() == row["account_id"]
        previous = rows.setdefault(row["interval_id"], row)
        assert previous == row, f"repeat of {row['interval_id']} changed content"
    return rows
