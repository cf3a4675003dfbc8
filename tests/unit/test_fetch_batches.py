"""``agents.fetches.FetchBatches``: batches of at most N records from a real
:class:`~agents.fetches.FetchChannel` (no broker: fetches are put as the consumer puts them).

A fetch that does not fit is split and its rest starts the next batch; a batch ends when
full, ``within_s`` after it started, or at once when ``stop`` is set; the channel is told a
take is done only once every one of its records was in a batch that is done (a rebalance
waits for that); cancelling the reader while it waits for more loses no fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from agents.fetches import Fetch, FetchBatches, FetchChannel

TP0, TP1 = TP("usage", 0), TP("usage", 1)


def _fetch(tp: TP, first: int, n: int, generation: int = 1) -> Fetch:
    return Fetch(tp, [ConsumerRecord(tp.topic, tp.partition, first + i, 0, 0, None, b"v",
                                     None, 0, 1, []) for i in range(n)], generation)


def _offsets(fetches: list[Fetch]) -> list[tuple[int, int]]:
    return [(f.tp.partition, r.offset) for f in fetches for r in f.records]


def _run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(body(), 30))


def test_fetches_are_split_at_the_limit_and_the_rest_starts_the_next_batch() -> None:
    async def body() -> None:
        channel = FetchChannel("usage")
        batches = FetchBatches(channel, 10, 0.05, asyncio.Event())
        await channel.put(_fetch(TP0, 0, 7))
        await channel.put(_fetch(TP1, 0, 7))  # one take of two fetches, 14 records
        first = await batches.next()
        assert _offsets(first.fetches) == [(0, o) for o in range(7)] + [(1, o) for o in range(3)]
        assert first.fetches[-1].next_offset == 3  # the mark of the split fetch
        first.done()
        assert channel.busy  # the take's rest is not processed yet
        await channel.put(_fetch(TP0, 7, 3))
        second = await batches.next()
        assert _offsets(second.fetches) == [(1, o) for o in range(3, 7)] + [(0, 7), (0, 8),
                                                                              (0, 9)]
        second.done()
        assert not channel.busy
        await asyncio.wait_for(channel.wait_idle(), 1)

    _run(body)


def test_a_fetch_that_fills_the_batch_exactly_leaves_the_next_fetches_whole() -> None:
    async def body() -> None:
        channel = FetchChannel("usage")
        batches = FetchBatches(channel, 7, 0.05, asyncio.Event())
        await channel.put(_fetch(TP0, 0, 7))
        await channel.put(_fetch(TP1, 0, 7))  # one take: the batch is full after the first
        first = await batches.next()
        assert [(f.tp, len(f.records)) for f in first.fetches] == [(TP0, 7)]
        first.done()
        second = await batches.next()
        assert [(f.tp, len(f.records)) for f in second.fetches] == [(TP1, 7)]
        second.done()
        assert not channel.busy

    _run(body)


def test_a_partial_batch_ends_within_its_time() -> None:
    async def body() -> float:
        channel = FetchChannel("usage")
        batches = FetchBatches(channel, 1000, 0.2, asyncio.Event())
        await channel.put(_fetch(TP0, 0, 5))
        started = time.monotonic()
        batch = await batches.next()
        waited = time.monotonic() - started
        assert batch.records == 5
        batch.done()
        assert not channel.busy
        return waited

    assert 0.2 <= _run(body) < 5.0


def test_more_fetches_within_the_time_join_the_batch() -> None:
    async def body() -> None:
        channel = FetchChannel("usage")
        stop = asyncio.Event()
        batches = FetchBatches(channel, 12, 30.0, stop)
        await channel.put(_fetch(TP0, 0, 5))

        async def later() -> None:
            await asyncio.sleep(0.05)
            await channel.put(_fetch(TP0, 5, 5))
            await asyncio.sleep(0.05)
            await channel.put(_fetch(TP0, 10, 5))

        feeder = asyncio.create_task(later())
        batch = await batches.next()  # full at 12 records, long before 30 s
        await feeder
        assert _offsets(batch.fetches) == [(0, o) for o in range(12)]
        batch.done()
        stop.set()  # else the carried rest would wait up to 30 s for more
        rest = await batches.next()
        assert _offsets(rest.fetches) == [(0, 12), (0, 13), (0, 14)]
        rest.done()
        assert not channel.busy

    _run(body)


def test_stop_ends_the_batch_at_once() -> None:
    async def body() -> None:
        channel = FetchChannel("usage")
        stop = asyncio.Event()
        batches = FetchBatches(channel, 1000, 30.0, stop)
        await channel.put(_fetch(TP0, 0, 5))
        waiting = asyncio.create_task(batches.next())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # waits for more, up to 30 s
        stop.set()  # a rebalance starts
        batch = await asyncio.wait_for(waiting, 1.0)
        assert batch.records == 5
        batch.done()
        await channel.put(_fetch(TP0, 5, 2))
        assert (await asyncio.wait_for(batches.next(), 1.0)).records == 2  # no wait

    _run(body)


def test_cancelling_the_reader_while_it_waits_for_more_loses_no_fetch() -> None:
    async def body() -> None:
        channel = FetchChannel("usage")
        batches = FetchBatches(channel, 1000, 30.0, asyncio.Event())
        await channel.put(_fetch(TP0, 0, 5))
        waiting = asyncio.create_task(batches.next())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await channel.put(_fetch(TP0, 5, 2))
        assert channel.queued == 1  # the fetch put after the cancel is still there
        taken = await channel.get_all()
        assert _offsets(taken) == [(0, 5), (0, 6)]

    _run(body)


def test_max_records_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_records"):
        FetchBatches(FetchChannel("usage"), 0, 1.0, asyncio.Event())
