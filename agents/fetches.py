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
