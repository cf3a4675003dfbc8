"""Pins the faust-streaming internals the worker relies on or patches (faust < 0.16).

The consumer commits input offsets after ``producer.flush()``. Faust's own
``ProducerBuffer.flush`` gives up after 0.1 s without a message sent and ignores the message
its sender task is handing to aiokafka, so a commit could pass changelog records still in
the buffer (state lost with the process after kill -9 while its input was committed).
:mod:`agents.faustapp` replaces it with a flush that waits until the buffer is empty and
nothing is in flight, and exits the process when a buffered record is not delivered.

After a restore from the changelogs, Faust's ``Recovery.on_recovery_completed`` resumed the
stream partitions before seeking them to their committed offsets; the records the running
Fetcher delivered in between made the next ones look like a hole in the log, which the
consumer counts as acked, so offsets were committed past records not processed yet (issue
18's loss after kill -9 with RocksDB lost). :mod:`agents.faustapp` replaces the method with
a copy that seeks first.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
from types import SimpleNamespace
from typing import Any

import pytest
from faust.tables.recovery import Recovery
from faust.transport.producer import ProducerBuffer
from faust.types import TP

import agents.faustapp  # (installs the patches)


class _SlowChannel:
    """A channel whose publish takes ``delay`` seconds, recording what it published."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.published: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.delay)
        self.published.append(fut.n)


class _Future(asyncio.Future[Any]):
    """A FutureMessage stand-in: a future with the message it carries."""

    n: int
    message: Any


def _message(channel: _SlowChannel, n: int) -> Any:
    fut = _Future()
    fut.n, fut.message = n, SimpleNamespace(channel=channel)
    return fut


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


# --- the delivery of buffered (changelog) records ---------------------------------------

def test_an_undelivered_changelog_record_exits_the_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's ``_on_published`` sets the exception on the message's future and only logs."""
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)

    async def run() -> None:
        channel = _SlowChannel(delay=0.0)
        buffer = await _buffer()
        try:
            failed, delivered = _message(channel, 1), _message(channel, 2)
            buffer.put(failed)
            buffer.put(delivered)
            await buffer.flush()
            delivered.set_result(None)
            await asyncio.sleep(0)
            assert exits == []
            failed.set_exception(RuntimeError("NotLeaderForPartition"))
            await asyncio.sleep(0)
        finally:
            await buffer.stop()

    asyncio.run(run())
    assert exits == [agents.faustapp.EXIT_STUCK]


# --- Recovery: seek the stream partitions before resuming them -----------------------------

FAUST_ON_RECOVERY_COMPLETED_SHA256 = (
    "6ef567acf072e46da3fccbccc6d662371f634f622c3d510972d5df81f70ae3ac"
)
"""Digest of faust-streaming 0.15.3's ``Recovery.on_recovery_completed`` source, which
:func:`agents.faustapp._seek_then_resume` copies with the seek moved before the resume."""


def test_faust_on_recovery_completed_is_the_copied_version() -> None:
    """If this fails, Faust changed the method: redo the copy (or drop it if Faust fixed the
    order) and update the digest."""
    source = inspect.getsource(agents.faustapp._faust_on_recovery_completed)
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_ON_RECOVERY_COMPLETED_SHA256
    assert source.index("consumer.resume_partitions(") < source.index("perform_seek()")
    assert Recovery.on_recovery_completed is agents.faustapp._seek_then_resume


class _Consumer:
    """Records the order of the calls on_recovery_completed makes on the consumer."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def assignment(self) -> set[Any]:
        return {TP("events", 0), TP("app-entities-changelog", 0)}

    def resume_partitions(self, tps: set[Any]) -> None:
        self.calls.append("resume " + ",".join(sorted(tp.topic for tp in tps)))

    async def perform_seek(self) -> None:
        self.calls.append("seek")

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")


def _recovery(calls: list[str]) -> Any:
    async def noop(*_: Any, **__: Any) -> None:
        return None

    async def wait(coro: Any, timeout: Any = None) -> None:
        await coro

    app = SimpleNamespace(
        consumer=_Consumer(calls), consumer_generation_id=7,
        on_rebalance_complete=SimpleNamespace(send=noop),
        conf=SimpleNamespace(broker_request_timeout=30.0),
        flow_control=SimpleNamespace(resume=lambda: calls.append("flow_control")),
        _fetcher=SimpleNamespace(maybe_start=noop),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
        on_rebalance_end=lambda: calls.append("end"),
    )
    return SimpleNamespace(
        app=app, log=SimpleNamespace(info=lambda *a: None, warning=lambda *a: None,
                                     dev=lambda *a: None),
        _set_recovery_ended=lambda: None, tables=SimpleNamespace(
            values=lambda: [], on_actives_ready=lambda: None,
            on_standbys_ready=lambda: None),
        actives_for_table={}, standbys_for_table={}, _wait=wait,
        _is_changelog_tp=lambda tp: tp.topic.endswith("-changelog"),
        completed=SimpleNamespace(set=lambda: calls.append("completed")),
    )


def test_stream_partitions_are_sought_before_they_are_resumed() -> None:
    calls: list[str] = []
    asyncio.run(agents.faustapp._seek_then_resume(_recovery(calls), generation_id=7))
    assert calls[:2] == ["seek", "resume events"]
    assert calls.index("resume_flow") > calls.index("resume events")


def test_faust_resumed_them_before_seeking() -> None:
    """The order the patch exists for (Faust's own method on the same stand-in)."""
    calls: list[str] = []
    asyncio.run(agents.faustapp._faust_on_recovery_completed(_recovery(calls), 7))
    assert calls[:2] == ["resume events", "seek"]


def test_a_newer_generation_resumes_nothing() -> None:
    calls: list[str] = []
    asyncio.run(agents.faustapp._seek_then_resume(_recovery(calls), generation_id=6))
    assert calls == []
