"""The acknowledged-then-stored tail of each batch, run in order behind the processing.

A batch's effects must happen in this order: its records are sent and acknowledged, then
its state is stored (changelog acknowledged, then RocksDB), then its fetches are marked
processed (the offsets the consumer may commit). Waiting for each acknowledgement inside
the processing loop would leave the CPU idle for two broker round trips per batch, so the
loop hands that tail to a :class:`Committer` and goes on with the next batch: tails run
one at a time, in submission order, at most ``depth`` waiting (the loop then waits:
back-pressure). A tail that raises calls ``on_error`` (the worker exits 70): nothing after
it runs, so nothing after it is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Tail = Callable[[], Awaitable[None]]
"""One batch's tail: ``async def tail() -> None``."""


class Committer:
    """Runs :data:`Tail` callables one at a time in submission order (see module doc)."""

    def __init__(self, on_error: Callable[[str], None], name: str, depth: int = 2) -> None:
        self.name = name
        self._on_error = on_error
        self._queue: asyncio.Queue[Tail] | None = None
        self._depth = depth
        self._task: asyncio.Task[None] | None = None
        self._pending = 0

    def _started(self) -> asyncio.Queue[Tail]:
        if self._queue is None:  # in the running loop, on first use
            self._queue = asyncio.Queue(self._depth)
            self._task = asyncio.ensure_future(self._run())
        return self._queue

    async def submit(self, tail: Tail) -> None:
        """Queue ``tail`` (waits while ``depth`` tails are queued)."""
        queue = self._started()
        self._pending += 1
        await queue.put(tail)

    @property
    def idle(self) -> bool:
        """No tail queued or running."""
        return self._pending == 0

    async def drain(self) -> None:
        """Return once every tail submitted so far has run."""
        if self._queue is not None:
            await self._queue.join()

    async def _run(self) -> None:
        queue = self._started()
        while True:
            tail = await queue.get()
            try:
                await tail()
            except Exception:
                self._on_error(f"{self.name} failed")
            finally:
                self._pending -= 1
                queue.task_done()
