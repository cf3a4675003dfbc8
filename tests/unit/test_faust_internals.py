"""Pins the faust-streaming internals the worker relies on or patches (faust < 0.16).

The consumer commits input offsets after ``producer.flush()``. Faust's own
``ProducerBuffer.flush`` gives up after 0.1 s without a message sent and ignores the message
its sender task is handing to aiokafka, so a commit could pass changelog records still in
the buffer (state lost with the process after kill -9 while its input was committed).
:mod:`agents.faustapp` replaces it with a flush that waits until the buffer is empty and
nothing is in flight.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

import agents.faustapp  # noqa: F401  (installs the patched flush)


class _SlowChannel:
    """A channel whose publish takes ``delay`` seconds, recording what it published."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.published: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.delay)
        self.published.append(fut.n)


def _message(channel: _SlowChannel, n: int) -> Any:
    return SimpleNamespace(n=n, message=SimpleNamespace(channel=channel))


async def _buffer() -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


def test_faust_flush_atmost_gives_up_with_messages_pending() -> None:
    """The Faust behaviour the patch exists for (if this fails, Faust changed: re-check)."""

    async def run() -> tuple[int, int]:
        channel = _SlowChannel(delay=0.3)
        buffer = await _buffer()
        try:
            for n in range(3):
                buffer.put(_message(channel, n))
            await ProducerBuffer.flush_atmost(buffer, None)  # Faust's own loop
            returned_with = len(channel.published)
            while len(channel.published) < 3:
                await asyncio.sleep(0.05)
            return returned_with, len(channel.published)
        finally:
            await buffer.stop()

    returned_with, total = asyncio.run(run())
    assert returned_with < 3
    assert total == 3


def test_patched_flush_waits_for_every_message_and_the_one_in_flight() -> None:
    async def run() -> tuple[int, int]:
        channel = _SlowChannel(delay=0.25)
        buffer = await _buffer()
        try:
            for n in range(5):
                buffer.put(_message(channel, n))
            await asyncio.sleep(0.01)  # the sender task has taken message 0 off the queue
            await buffer.flush()
            return len(channel.published), buffer.size
        finally:
            await buffer.stop()

    published, size = asyncio.run(run())
    assert published == 5
    assert size == 0


def test_patched_flush_of_an_empty_buffer_returns() -> None:
    async def run() -> None:
        buffer = await _buffer()
        try:
            await asyncio.wait_for(buffer.flush(), timeout=5)
        finally:
            await buffer.stop()

    asyncio.run(run())
