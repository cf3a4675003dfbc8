"""``BatchSender``: records to aiokafka record batches, per partition, in order.

The producer here is a stand-in that keeps the batches it is given (aiokafka's own
``BatchBuilder``, so "full" means what it means on the wire); nothing talks to Kafka.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from agents.faustapi import append_records
from agents.sender import BatchSender
from metering.partitioning import partition_for

PARTITIONS = 4


class Client:
    """``add_topic`` of aiokafka's client: the topics the producer tracks."""

    def __init__(self) -> None:
        self.topics: set[str] = set()

    async def add_topic(self, topic: str) -> None:
        self.topics.add(topic)


class Producer:
    """``create_batch`` / ``send_batch`` of aiokafka's producer, keeping what is sent."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[int, list[tuple[bytes | None, bytes | None]]]] = []
        self.client = Client()

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        records = DefaultRecordBatch(bytearray(batch._build()))
        self.sent.append((partition, [(r.key, r.value) for r in records]))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _records(n: int) -> list[tuple[bytes | None, bytes]]:
    return [(None if i % 5 == 0 else f"acct-{i % 37}".encode(), b"v%05d" % i + b"x" * 200)
            for i in range(n)]


def _batches(producer: Producer) -> dict[int, list[list[tuple[bytes | None, bytes | None]]]]:
    """Partition -> its batches in the order sent (partitions are independent)."""
    out: dict[int, list[list[tuple[bytes | None, bytes | None]]]] = defaultdict(list)
    for partition, records in producer.sent:
        out[partition].append(records)
    return dict(out)


def _by_partition(producer: Producer) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    out: dict[int, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
    for partition, records in producer.sent:
        out[partition] += records
    return dict(out)


async def _send(batch_size: int, many: bool,
                records: list[tuple[bytes | None, bytes]]) -> tuple[Producer, int]:
    producer = Producer(batch_size)
    sender = BatchSender(lambda: producer, "usage", PARTITIONS)
    if many:
        await sender.add_many(records[:300])
        await sender.add_many(iter(records[300:]))  # any iterable
    else:
        for key, value in records:
            await sender.add(key, value)
    before_submit = len(producer.sent)
    await sender.submit()
    return producer, before_submit


def test_add_many_places_records_as_add_does() -> None:
    """Kafka's murmur2 of the key (without a key: the partitions in turn), in order within
    each partition; the same batches whether added one by one or many at a time."""
    records = _records(1000)
    one, _ = asyncio.run(_send(4096, False, records))
    many, _ = asyncio.run(_send(4096, True, records))
    assert _batches(many) == _batches(one)
    placed = _by_partition(many)
    assert sorted(v for rs in placed.values() for _, v in rs) == sorted(v for _, v in records)
    for partition, rs in placed.items():
        expected = [r for r in records if r[0] is not None
                    and partition_for(r[0], PARTITIONS) == partition]
        assert [r for r in rs if r[0] is not None] == expected
    keyless = [r for r in records if r[0] is None]
    for partition in range(PARTITIONS):  # in turn: the first to 0, the next to 1, ...
        assert [r for r in placed[partition] if r[0] is None] == keyless[partition::PARTITIONS]


def test_add_many_submits_only_full_batches_until_submit() -> None:
    records = _records(1000)
    small, submitted_early = asyncio.run(_send(4096, True, records))
    assert 0 < submitted_early < len(small.sent)  # full ones went out while adding
    big, submitted_early = asyncio.run(_send(1 << 20, True, records))
    assert submitted_early == 0
    assert len(big.sent) == PARTITIONS  # one batch per partition at submit


def test_add_many_to_a_given_partition() -> None:
    async def run() -> Producer:
        producer = Producer(1 << 20)
        sender = BatchSender(lambda: producer, "events")  # partition count unknown: unused
        await sender.add_many([(b"k", b"1"), (None, b"2")], partition=3)
        await sender.submit()
        return producer

    producer = asyncio.run(run())
    assert producer.sent == [(3, [(b"k", b"1"), (None, b"2")])]
    assert producer.client.topics == {"events"}  # tracked before its first batch (metadata)


def test_append_records_is_batchbuilder_append_pinned() -> None:
    """``append_records`` (aiokafka's private ``_builder``/``_relative_offset``, 0.14) fills a
    batch exactly as ``BatchBuilder.append`` does: same records, offsets, count, and the
    same record refused first when full (then the batch is closed)."""
    import aiokafka

    assert aiokafka.__version__.startswith("0.14.")
    records = _records(100)
    public = BatchBuilder(4096, 0)
    stop = next(i for i, (k, v) in enumerate(records)
                if public.append(key=k, value=v, timestamp=None) is None)
    keys, values = [k for k, _ in records], [v for _, v in records]
    order = range(len(records))
    private = BatchBuilder(4096, 0)
    assert append_records(private, keys, values, order) == stop
    assert append_records(private, keys, values, order, stop) == stop  # closed: no more
    assert private.closed()
    assert public.closed()
    assert private.record_count() == public.record_count() == stop
    assert private.size() == public.size()
    read = [DefaultRecordBatch(bytearray(b._build())) for b in (private, public)]
    assert [[(r.offset, r.key, r.value, r.headers) for r in batch] for batch in read] == [
        [(i, k, v, []) for i, (k, v) in enumerate(records[:stop])]] * 2
    rest = BatchBuilder(1 << 20, 0)
    assert append_records(rest, keys, values, order, stop) == len(records)
    assert rest.record_count() == len(records) - stop
    assert not rest.closed()
