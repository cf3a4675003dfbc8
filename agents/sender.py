"""Records to one topic as aiokafka record batches, acknowledged together.

Per-record ``send`` costs tens of microseconds in aiokafka and Faust; the worker sends
intervals, forwarded events and changelog records in bulk: records are appended to one
batch per partition (Kafka's murmur2 on the key, like any producer, or a given partition)
and each full or final batch is submitted once. :meth:`BatchSender.flush` returns when the
broker acknowledged every record sent so far, with the offset of the last record per
partition; a failed send raises there (the caller stops the worker: nothing past it is
committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from agents.faustapi import append_records, wait_on_metadata
from metering.partitioning import partition_for

PARTITION_CACHE_MAX = 100_000
"""Keys whose partition is remembered (cleared when exceeded)."""


class BatchSender:
    """Sends records to one topic in record batches.

    Args:
        producer: returns the running aiokafka producer (``create_batch``, ``send_batch``,
            ``client``).
        topic: the destination topic.
        partitions: its partition count when known (else read from the metadata on the
            first keyed record).
        waiting: wraps the wait for acknowledgements (e.g. liveness reporting); optional.
    """

    def __init__(self, producer: Callable[[], Any], topic: str, partitions: int | None = None,
                 waiting: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None) -> None:
        self.topic = topic
        self._get_producer = producer
        self._partitions = partitions
        self._waiting = waiting
        self.batches: dict[int, Any] = {}
        self.futures: list[tuple[Any, int]] = []  # (delivery future, records in the batch)
        self._cache: dict[bytes, int] = {}
        self._next = -1
        self._tracked_by: Any = None  # the producer client that tracks ``topic``

    async def _n_partitions(self) -> int:
        if self._partitions is None:
            producer = self._get_producer()
            await wait_on_metadata(producer, self.topic)
            parts = producer.client.cluster.partitions_for_topic(self.topic)
            if not parts:
                raise RuntimeError(f"topic {self.topic!r} has no partitions in the metadata")
            self._partitions = len(parts)
        return self._partitions

    async def add(self, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        """Append one record; ``partition`` None: murmur2 of ``key`` (without a key: the
        partitions in turn, one record each)."""
        await self.add_columns((key,), (value,), partition)

    async def add_many(self, records: Iterable[tuple[bytes | None, bytes]],
                       partition: int | None = None) -> None:
        """Append ``records`` (key, value) in order (:meth:`add_columns`)."""
        pairs = records if isinstance(records, list) else list(records)
        await self.add_columns([key for key, _ in pairs], [value for _, value in pairs],
                               partition)

    async def add_columns(self, keys: Sequence[bytes | None], values: Sequence[bytes],
                          partition: int | None = None) -> None:
        """Append the records ``keys[i]``, ``values[i]`` in order, as :meth:`add` appends
        each; awaits only to read the partition count once and to submit a batch that
        filled up (so a batch of rows costs one await, not one per record). Records are
        grouped by partition as indices (no tuple per record: nothing for the cyclic
        garbage collector to track)."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} values")
        if partition is not None:
            runs: dict[int, Sequence[int]] = {partition: range(len(keys))}
        else:
            runs = self._by_partition(keys, self._partitions or await self._n_partitions())
        batches, create = self.batches, self._get_producer().create_batch
        for p, run in runs.items():
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = create()
            done = append_records(batch, keys, values, run)
            while done < len(run):  # full: submit it (an empty batch takes any one record)
                await self._submit(p, batch)
                batch = batches[p] = create()
                done = append_records(batch, keys, values, run, done)

    def _by_partition(self, keys: Sequence[bytes | None],
                      n_partitions: int) -> dict[int, Sequence[int]]:
        """Indices of ``keys`` by partition, in order: murmur2 of the key (without a key:
        the partitions in turn, one record each)."""
        cache = self._cache
        runs: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            if key is None:
                self._next = p = (self._next + 1) % n_partitions
            else:
                known = cache.get(key)
                if known is None:
                    if len(cache) > PARTITION_CACHE_MAX:
                        cache.clear()
                    known = cache[key] = partition_for(key, n_partitions)
                p = known
            run = runs.get(p)
            if run is None:
                run = runs[p] = []
            run.append(i)
        return dict(runs)

    async def _track(self, producer: Any) -> None:
        """Make ``producer`` track this topic in its metadata refreshes (see module doc)."""
        if self._tracked_by is not producer.client:
            await producer.client.add_topic(self.topic)  # new: waits for a refresh with it
            self._tracked_by = producer.client

    async def _submit(self, partition: int, batch: Any) -> None:
        producer = self._get_producer()
        await self._track(producer)
        fut = await producer.send_batch(batch, self.topic, partition=partition)
        self.futures.append((fut, batch.record_count()))

    async def submit(self) -> list[tuple[Any, int]]:
        """Submit the open batches; the delivery futures of everything sent so far (for
        :meth:`wait`), which this sender forgets."""
        for p, batch in self.batches.items():
            if batch.record_count():
                await self._submit(p, batch)
        self.batches.clear()
        pending, self.futures = self.futures, []
        return pending

    async def wait(self, pending: list[tuple[Any, int]]) -> dict[int, int]:
        """Wait until every record of ``pending`` is acknowledged (raises if one failed).

        Returns partition -> offset of its last acknowledged record."""
        if not pending:
            return {}
        gathered = asyncio.gather(*(fut for fut, _ in pending))
        metas = await (self._waiting(gathered) if self._waiting else gathered)
        last: dict[int, int] = {}
        for meta, (_, count) in zip(metas, pending, strict=True):
            end = meta.offset + count - 1
            if end > last.get(meta.partition, -1):
                last[meta.partition] = end
        return last

    async def flush(self) -> dict[int, int]:
        """Submit the open batches and wait until every record sent so far is acknowledged.

        Returns partition -> offset of its last acknowledged record (of this flush)."""
        return await self.wait(await self.submit())
