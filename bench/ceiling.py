"""The streaming ceiling: raw Kafka clients reading the input and writing the output volume.

What a worker cannot beat on this machine and broker, measured in the same run: a raw
client reads the input topic from the beginning to its end offsets (no decoding, no
processing; each value is touched), then a raw producer writes as many records, and as
many key and value bytes, as the worker wrote to its usage topic, to a fresh topic with
the usage topic's partition count, with ``acks=all`` (the worker's producers wait for all
in-sync replicas too) and no compression, waiting until every record is acknowledged.
The ceiling's time is the sum of both; its rate is *input records / that time*, so it is
directly comparable with the worker's input records/s for the same output.

Start-up is left out, as the worker's figure leaves out its own (*first commit to caught
up*): the read is timed from the first batch the consumer returns to the last, and scaled
to all records (:func:`steady_seconds`; client creation, connection and the first fetch
took ~0.6 s of a 1.8-s confluent-kafka read of 200 000 records, which had understated the
ceiling by ~13 % with hourly periods); the producer is created and has the topic's
metadata before its clock starts.

Two clients:

* **confluent-kafka** (librdkafka; the ceiling the targets use): ``Consumer.consume`` in
  batches of 10 000; ``Producer.produce`` with a delivery callback that librdkafka calls
  only for failed records (``delivery.report.only.error``), ``linger.ms`` 5, 1 MiB
  batches, then ``flush()``: every record acknowledged or the run fails.
* **aiokafka** (the worker's own client; a second reference): ``getmany`` in batches of
  10 000; ``create_batch``/``send_batch`` per partition (its fastest path), all batches
  awaited.

Units: records, bytes, seconds of wall clock (``time.perf_counter``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

DEADLINE_S = 600.0
"""Longest a single read or write may take before the benchmark gives up."""


def steady_seconds(records: int, first_batch: int, first_at: float, end_at: float) -> float:
    """Seconds ``records`` take at the rate measured after the first batch: ``records -
    first_batch`` records were read from ``first_at`` to ``end_at`` (``time.perf_counter``).
    With nothing after the first batch, the time from ``first_at`` to ``end_at``."""
    after = records - first_batch
    span = end_at - first_at
    return span * records / after if after > 0 else span


class CeilingError(RuntimeError):
    """A raw client did not read or write what it should have, or took too long."""


@dataclass(frozen=True)
class Output:
    """What a worker wrote to its usage topic: records, key and value bytes, partitions."""

    records: int
    key_bytes: int
    value_bytes: int
    partitions: int

    @property
    def mean_value(self) -> float:
        return self.value_bytes / self.records if self.records else 0.0


@dataclass(frozen=True)
class Ceiling:
    """One ceiling measurement: read ``records`` input records, write ``written`` records."""

    client: str
    records: int
    read_s: float
    written: int
    write_s: float

    @property
    def seconds(self) -> float:
        return self.read_s + self.write_s

    @property
    def rate(self) -> float:
        """Input records per second of read + write."""
        return self.records / self.seconds if self.seconds else 0.0


def _conf(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "log_level": 3, **extra}  # errors only


def _partition_count(bootstrap: str, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(_conf(bootstrap)).list_topics(topic, timeout=30)
    tmeta = meta.topics.get(topic)
    if tmeta is None or tmeta.error is not None or not tmeta.partitions:
        raise CeilingError(f"topic {topic} not found on {bootstrap}")
    return len(tmeta.partitions)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` (replication 1) and wait for the broker to confirm it."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(_conf(bootstrap))  # must outlive the futures
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=60)


def _read(bootstrap: str, topic: str, ends: dict[int, int],
          each: Any = None) -> tuple[int, float]:
    """confluent-kafka: read ``topic`` from the beginning to ``ends``; (records, seconds).

    ``each(message)`` is called for every record before the end offsets when given;
    otherwise each value is only touched (``len``). Seconds: :func:`steady_seconds` (from
    the first batch returned).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    t0 = time.perf_counter()
    consumer = Consumer(_conf(bootstrap, **{
        "group.id": f"bench-ceiling-{time.monotonic_ns()}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20,
        "queued.max.messages.kbytes": 256 << 10}))
    try:
        left = {p: end for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(left)])
        n = first_batch = 0
        first_at: float | None = None
        while left:
            batch: list[Any] = consumer.consume(num_messages=10_000, timeout=1.0)
            if batch and first_at is None:
                first_at, first_batch = time.perf_counter(), len(batch)
            for msg in batch:
                if msg.error() is not None:
                    raise CeilingError(f"reading {topic}: {msg.error()}")
                p, off = msg.partition(), msg.offset()
                end = left.get(p)
                if end is None or off >= end:
                    continue
                if each is None:
                    len(msg.value())
                else:
                    each(msg)
                n += 1
                if off + 1 >= end:
                    del left[p]
            if time.perf_counter() - t0 > DEADLINE_S:
                raise CeilingError(f"reading {topic} took more than {DEADLINE_S:.0f} s")
        end_at = time.perf_counter()
        return n, steady_seconds(n, first_batch, t0 if first_at is None else first_at, end_at)
    finally:
        consumer.close()


def output_of(bootstrap: str, topic: str, ends: dict[int, int]) -> Output:
    """Count the records and key/value bytes of a worker's usage topic up to ``ends``."""
    sizes = [0, 0]

    def each(msg: Any) -> None:
        key = msg.key()
        sizes[0] += 0 if key is None else len(key)
        sizes[1] += len(msg.value() or b"")

    n, _ = _read(bootstrap, topic, ends, each)
    return Output(n, sizes[0], sizes[1], _partition_count(bootstrap, topic))


def _payload(out: Output) -> tuple[list[bytes], bytes]:
    """Keys (a few thousand distinct, like account ids) and one value of the mean sizes."""
    key_len = max(1, round(out.key_bytes / out.records)) if out.records and out.key_bytes else 0
    keys = [f"{i:0{key_len}d}"[-key_len:].encode() for i in range(3000)] if key_len else []
    value = b"x" * max(1, round(out.value_bytes / max(1, out.records)))
    return keys, value


def _write(bootstrap: str, topic: str, out: Output) -> tuple[int, float]:
    """confluent-kafka: write ``out.records`` records of ``out``'s mean sizes, all acked."""
    from confluent_kafka import KafkaException, Producer

    keys, value = _payload(out)
    failed: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    producer = Producer(_conf(bootstrap, **{
        "acks": "all", "linger.ms": 5, "batch.size": 1 << 20, "batch.num.messages": 100_000,
        "compression.type": "none", "delivery.report.only.error": True,
        "on_delivery": delivered,  # in the configuration: produce() without keywords
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1 << 20}))
    producer.list_topics(topic, timeout=30)  # connected, the topic's metadata known
    t0 = time.perf_counter()
    key_cycle = itertools.cycle(keys) if keys else itertools.repeat(None)
    produce, poll = producer.produce, producer.poll
    for _ in range(out.records):
        key = next(key_cycle)
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:  # the local queue is full: serve deliveries, try again
                poll(0.05)
            except KafkaException as exc:  # pragma: no cover - broker trouble
                raise CeilingError(f"producing to {topic}: {exc}") from exc
        if time.perf_counter() - t0 > DEADLINE_S:
            raise CeilingError(f"writing {topic} took more than {DEADLINE_S:.0f} s")
    left = producer.flush(DEADLINE_S)
    seconds = time.perf_counter() - t0
    if left or failed:
        raise CeilingError(f"writing {topic}: {left} records unacknowledged, "
                           f"{len(failed)} failed (first: {failed[:1]})")
    return out.records, seconds


def confluent(bootstrap: str, input_topic: str, ends: dict[int, int], out: Output,
              target_topic: str) -> Ceiling:
    """The confluent-kafka ceiling (``target_topic`` is created here)."""
    create_topic(bootstrap, target_topic, out.partitions)
    n, read_s = _read(bootstrap, input_topic, ends)
    if n != sum(ends.values()):
        raise CeilingError(f"confluent consumer read {n:,} records, expected "
                           f"{sum(ends.values()):,}")
    written, write_s = _write(bootstrap, target_topic, out)
    return Ceiling("confluent-kafka", n, read_s, written, write_s)


async def _aio_read(bootstrap: str, topic: str, ends: dict[int, int]) -> tuple[int, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    t0 = time.perf_counter()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(ends) if ends[p] > 0]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp: ends[tp.partition] for tp in tps}
        n = first_batch = 0
        first_at: float | None = None
        while left:
            batch = await consumer.getmany(*left, timeout_ms=1000, max_records=10_000)
            if batch and first_at is None:
                first_at, first_batch = time.perf_counter(), sum(map(len, batch.values()))
            for tp, msgs in batch.items():
                for msg in msgs:
                    len(msg.value)
                n += len(msgs)
                if msgs and msgs[-1].offset + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
            if time.perf_counter() - t0 > DEADLINE_S:
                raise CeilingError(f"aiokafka reading {topic} took more than "
                                   f"{DEADLINE_S:.0f} s")
        end_at = time.perf_counter()
        return n, steady_seconds(n, first_batch, t0 if first_at is None else first_at, end_at)
    finally:
        await consumer.stop()


async def _aio_write(bootstrap: str, topic: str, out: Output) -> tuple[int, float]:
    from aiokafka import AIOKafkaProducer

    keys, value = _payload(out)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=1 << 20, request_timeout_ms=60_000)
    await producer.start()
    try:
        await producer.partitions_for(topic)  # the topic's metadata known
        t0 = time.perf_counter()
        pending: list[Any] = []
        n, p = 0, 0
        key_cycle = itertools.cycle(keys) if keys else itertools.repeat(None)
        while n < out.records:
            batch = producer.create_batch()
            while n < out.records and batch.append(key=next(key_cycle), value=value,
                                                   timestamp=None) is not None:
                n += 1
            pending.append(await producer.send_batch(batch, topic, partition=p))
            p = (p + 1) % out.partitions
            if len(pending) >= 64:
                await asyncio.gather(*pending)
                pending.clear()
            if time.perf_counter() - t0 > DEADLINE_S:
                raise CeilingError(f"aiokafka writing {topic} took more than "
                                   f"{DEADLINE_S:.0f} s")
        await asyncio.gather(*pending)
        return n, time.perf_counter() - t0
    finally:
        await producer.stop()


def aiokafka(bootstrap: str, input_topic: str, ends: dict[int, int], out: Output,
             target_topic: str) -> Ceiling:
    """The aiokafka reference (``target_topic`` is created here)."""
    create_topic(bootstrap, target_topic, out.partitions)
    n, read_s = asyncio.run(_aio_read(bootstrap, input_topic, ends))
    if n != sum(ends.values()):
        raise CeilingError(f"aiokafka consumer read {n:,} records, expected "
                           f"{sum(ends.values()):,}")
    written, write_s = asyncio.run(_aio_write(bootstrap, target_topic, out))
    return Ceiling("aiokafka", n, read_s, written, write_s)


def topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    """The broker's topics whose names start with ``prefix``."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(_conf(bootstrap)).list_topics(timeout=30)
    return sorted(t for t in meta.topics if t.startswith(prefix))


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete ``topics`` (best effort: frees the broker's disk between runs)."""
    from confluent_kafka.admin import AdminClient

    if not topics:
        return
    admin = AdminClient(_conf(bootstrap))  # must outlive the futures
    for future in admin.delete_topics(topics).values():
        try:
            future.result(timeout=60)
        except Exception:  # best effort
            continue
