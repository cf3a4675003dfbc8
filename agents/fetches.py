"""Whole fetches of one partition, handed from the consumer to one agent loop.

The worker's consumer (:class:`agents.faustapi.BatchConsumer`) does not turn every record
into a Faust event: it hands each partition's part of a fetch, as aiokafka returned it, to
the :class:`FetchChannel` of its topic. One agent loop reads the channel, processes the
fetch as one batch, and only after every effect of the batch is acknowledged by the broker
marks the partition "processed up to" (:meth:`agents.faustapi.BatchConsumer.mark_processed`);
that mark is the offset the consumer commits.

The channel is bounded (back-pressure: the consumer waits while the loop is behind) and
knows whether fetches wait or are being processed, so a rebalance can wait until every
fetch handed over is processed before it commits and gives partitions away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP


@dataclass(frozen=True, slots=True)
class Fetch:
    """Records of one partition from one fetch, in offset order.

    ``records`` are aiokafka ``ConsumerRecord`` objects (``topic``, ``partition``,
    ``offset``, ``timestamp`` in UTC ms, ``key``, ``value``); ``generation`` is the consumer
    group generation the fetch was read in (a fetch of an older generation is dropped).
    """

    tp: TP
    records: Sequence[Any]
    generation: int

    @property
    def next_offset(self) -> int:
        """The offset after the last record: the partition's commit offset once done."""
        return int(self.records[-1].offset) + 1


class FetchChannel:
    """A bounded queue of :class:`Fetch` with one reader that reports when it is done.

    ``maxsize`` fetches may wait; :meth:`put` waits while the queue is full.
    """

    def __init__(self, topic: str, maxsize: int = 8) -> None:
        self.topic = topic
        self._queue: asyncio.Queue[Fetch] = asyncio.Queue(maxsize)
        self._outstanding = 0
        self._idle: asyncio.Event | None = None

    def _idle_event(self) -> asyncio.Event:
        if self._idle is None:  # created in the running loop, on first use
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    async def put(self, fetch: Fetch) -> None:
        """Queue a fetch (waits while ``maxsize`` fetches are queued)."""
        await self._queue.put(fetch)
        self._idle_event().clear()  # no await since the put: nobody saw it idle meanwhile

    async def get(self) -> Fetch:
        """The next fetch; the reader then calls :meth:`done` once it is processed (a
        reader may get more before it calls :meth:`done` for earlier ones)."""
        fetch = await self._queue.get()
        self._outstanding += 1
        self._idle_event().clear()
        return fetch

    async def get_all(self) -> list[Fetch]:
        """The next fetch and every other one queued behind it (a reader that is behind
        processes them as one batch: one wait for acknowledgements instead of one per
        fetch); the reader then calls :meth:`done`."""
        fetches = [await self._queue.get()]
        while True:
            try:
                fetches.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        self._outstanding += 1
        self._idle_event().clear()
        return fetches

    def done(self) -> None:
        """The fetches returned by the earliest :meth:`get`/:meth:`get_all` not yet done
        are processed (or abandoned)."""
        self._outstanding = max(0, self._outstanding - 1)
        if not self._outstanding and not self._queue.qsize():
            self._idle_event().set()

    def clear(self) -> int:
        """Drop every queued fetch (a rebalance: they are read again from the committed
        offsets); returns how many were dropped."""
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if not self._outstanding:
                    self._idle_event().set()
                return dropped
            dropped += 1

    @property
    def queued(self) -> int:
        """Fetches waiting for the reader."""
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        """A fetch taken by the reader is not done yet."""
        return self._outstanding > 0

    async def wait_idle(self) -> None:
        """Return once every fetch taken by the reader is done and none is queued."""
        await self._idle_event().wait()


class Batch:
    """Fetches taken from a :class:`FetchChannel` by :class:`FetchBatches`, to process as
    one batch; :meth:`done` once processed (or abandoned)."""

    __slots__ = ("_channel", "_completes", "fetches")

    def __init__(self, channel: FetchChannel, fetches: list[Fetch], completes: int) -> None:
        self._channel = channel
        self._completes = completes
        self.fetches = fetches
        """In the order taken (per partition, offset order)."""

    @property
    def records(self) -> int:
        return sum(len(f.records) for f in self.fetches)

    def done(self) -> None:
        """Tell the channel: every take whose fetches all were in this batch is done (a
        take split at the batch's end is done with the batch that holds its rest)."""
        for _ in range(self._completes):
            self._channel.done()
        self._completes = 0


class FetchBatches:
    """Batches of at most ``max_records`` records from one :class:`FetchChannel`: a batch
    starts with the next fetch and ends when it is full, ``within_s`` seconds after it
    started, or as soon as ``stop`` is set (a rebalance: what was taken is processed at
    once). A fetch that does not fit is split; its rest starts the next batch. One reader.

    Args:
        channel: the channel of the topic (or topics) read.
        max_records: most records per batch (>= 1).
        within_s: most seconds a batch waits for more records after its first (>= 0).
        stop: when set, a batch waits for nothing more (Faust's ``suspend_flow``).
    """

    def __init__(self, channel: FetchChannel, max_records: int, within_s: float,
                 stop: asyncio.Event) -> None:
        if max_records < 1:
            raise ValueError(f"max_records {max_records} < 1")
        self.channel = channel
        self.max_records = max_records
        self.within_s = within_s
        self.stop = stop
        self._carry: list[Fetch] = []
        """The rest of a take split at the end of the last batch (its done is pending)."""

    async def next(self) -> Batch:
        """The next batch (waits for the first fetch as long as it takes)."""
        loop = asyncio.get_running_loop()
        take, self._carry = self._carry or await self.channel.get_all(), []
        deadline = loop.time() + self.within_s
        fetches: list[Fetch] = []
        n = completes = 0
        while True:
            for i, fetch in enumerate(take):
                room = self.max_records - n
                if len(fetch.records) > room:  # full: the rest starts the next batch
                    if not room:
                        self._carry = take[i:]
                        return Batch(self.channel, fetches, completes)
                    records = fetch.records
                    fetches.append(Fetch(fetch.tp, records[:room], fetch.generation))
                    self._carry = [Fetch(fetch.tp, records[room:], fetch.generation),
                                   *take[i + 1:]]
                    return Batch(self.channel, fetches, completes)
                fetches.append(fetch)
                n += len(fetch.records)
            completes += 1
            if n >= self.max_records:
                return Batch(self.channel, fetches, completes)
            more = await self._more(deadline - loop.time())
            if more is None:
                return Batch(self.channel, fetches, completes)
            take = more

    async def _more(self, timeout: float) -> list[Fetch] | None:
        """The next take within ``timeout`` seconds, or None (timed out, or ``stop``)."""
        if timeout <= 0 or self.stop.is_set():
            return None
        get = asyncio.ensure_future(self.channel.get_all())
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({get, stop}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not get.done():
                get.cancel()  # before it took anything: get_all takes only when it returns
        try:
            return await get
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this reader is cancelled, not just the wait for more
            return None
