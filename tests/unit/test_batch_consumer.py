"""Pins the Faust internals behind the worker's whole-fetch path (faust-streaming 0.15.3).

:mod:`agents.faustapi` subclasses Faust's aiokafka consumer (``BatchConsumer``): fetches of
batch topics go to a :class:`agents.fetches.FetchChannel`, their commit offset is the
agent's "processed up to" mark, a rebalance waits for the fetch in progress, and the
consumer thread lowers the hard-coded ``fetch_max_wait_ms``. :mod:`agents.state` writes
table partitions straight to Faust's RocksDB (``Store._db_for_partition``) with Faust's
persisted-offset key. If a test here fails after a Faust upgrade, re-check those overrides.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import aiokafka
import faust
import pytest
import rocksdict
from faust.stores.rocksdb import Store
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from agents.faustapi import (
    FETCH_MAX_WAIT_MS,
    OFFSET_KEY,
    BatchConsumer,
    _ShortWaitConsumerThread,
    batch_consumer,
    fetch_channel,
    use_batch_fetches,
)
from agents.fetches import Fetch, FetchChannel
from agents.observe import WorkerCounts
from agents.state import PartitionMeter
from metering.engine import Record
from metering.events import Source, UsageEvent
from metering.settings import Settings


def _app() -> faust.App:
    app = faust.App("pin-batch", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False)
    use_batch_fetches(app, ["in"])
    return app


def test_pinned_faust_version_and_private_names() -> None:
    assert faust.__version__ == "0.15.3"
    for name in ("_drain_messages", "_wait_next_records", "_new_offset",
                 "_filter_tps_with_pending_acks", "_filter_committable_offsets",
                 "_commit_offsets", "wait_empty", "on_partitions_revoked", "_to_message"):
        assert hasattr(FaustConsumer, name) or hasattr(BatchConsumer.__mro__[1], name), name
    # The stock drain loop awaits one callback per message (what BatchConsumer replaces).
    assert "callback(message)" in inspect.getsource(FaustConsumer._drain_messages)
    # Faust hard-codes the fetch wait the consumer thread lowers.
    assert "fetch_max_wait_ms=1500" in inspect.getsource(
        AIOKafkaConsumerThread._create_worker_consumer)
    assert Store.offset_key == OFFSET_KEY
    assert "_db_for_partition" in Store.__dict__


def test_the_app_consumes_through_the_batch_consumer() -> None:
    async def run() -> tuple[Any, Any, Any]:
        app = _app()
        consumer = batch_consumer(app)
        return type(consumer), type(consumer._thread), fetch_channel(app, "in")

    consumer_type, thread_type, channel = asyncio.run(run())
    assert consumer_type is BatchConsumer
    assert thread_type is _ShortWaitConsumerThread
    assert isinstance(channel, FetchChannel)


def test_consumer_thread_lowers_fetch_max_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> int:
        def stock(self: Any, transport: Any) -> aiokafka.AIOKafkaConsumer:
            return aiokafka.AIOKafkaConsumer(fetch_max_wait_ms=1500)

        monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", stock)
        thread = _ShortWaitConsumerThread.__new__(_ShortWaitConsumerThread)  # no service
        made = thread._create_worker_consumer(None)  # type: ignore[arg-type]
        return int(made._fetch_max_wait_ms)

    assert asyncio.run(run()) == FETCH_MAX_WAIT_MS == 100


def test_commit_offset_of_a_batch_topic_is_the_processed_mark() -> None:
    async def run() -> list[dict[TP, int]]:
        app = _app()
        consumer = batch_consumer(app)
        tp = TP("in", 0)
        seen = [consumer._filter_committable_offsets(
            list(consumer._filter_tps_with_pending_acks()))]
        consumer.mark_processed(tp, 10)
        consumer.mark_processed(tp, 7)  # never backwards
        seen.append(consumer._filter_committable_offsets(
            list(consumer._filter_tps_with_pending_acks())))
        consumer._committed_offset[tp] = 10  # Faust records what it committed
        seen.append(consumer._filter_committable_offsets(
            list(consumer._filter_tps_with_pending_acks())))
        return seen

    before, marked, after_commit = asyncio.run(run())
    assert before == {}
    assert marked == {TP("in", 0): 10}
    assert after_commit == {}


def test_wait_empty_waits_until_every_handed_fetch_is_processed_then_commits() -> None:
    async def run() -> tuple[list[str], dict[TP, int]]:
        app = _app()
        consumer = batch_consumer(app)
        channel = fetch_channel(app, "in")
        committed: dict[TP, int] = {}

        async def commit_offsets(offsets: Any, start_new_transaction: bool = True) -> bool:
            committed.update(offsets)
            return True

        consumer._commit_offsets = commit_offsets  # type: ignore[method-assign]
        tp = TP("in", 0)
        for offset in (4, 5, 6):
            await channel.put(Fetch(tp, [type("R", (), {"offset": offset})], 0))
        first = await channel.get()  # the reader took one; two stay queued
        steps: list[str] = []

        async def reader() -> None:
            await asyncio.sleep(0.2)
            consumer.mark_processed(first.tp, first.next_offset)
            channel.done()
            rest = await channel.get_all()  # queued fetches are processed, not dropped
            await asyncio.sleep(0.1)
            for fetch in rest:
                consumer.mark_processed(fetch.tp, fetch.next_offset)
            steps.append(f"processed {len(rest) + 1}")
            channel.done()

        task = asyncio.ensure_future(reader())
        await consumer.wait_empty()
        steps.append("wait_empty returned")
        await task
        return steps, committed

    steps, committed = asyncio.run(run())
    assert steps == ["processed 3", "wait_empty returned"]
    assert committed == {TP("in", 0): 7}


def test_fetch_channel_is_bounded_and_reports_idle() -> None:
    async def run() -> tuple[bool, bool, bool]:
        channel = FetchChannel("t", maxsize=1)
        tp = TP("t", 0)
        record = type("R", (), {"offset": 0})
        await channel.put(Fetch(tp, [record], 1))
        second = asyncio.ensure_future(channel.put(Fetch(tp, [record], 1)))
        await asyncio.sleep(0.05)
        blocked = not second.done()
        await channel.get()
        await asyncio.wait_for(second, 1)
        busy = channel.busy
        channel.done()
        assert not channel._idle_event().is_set()  # one still queued
        await channel.get()
        channel.done()
        await asyncio.wait_for(channel.wait_idle(), 1)
        return blocked, busy, channel.busy

    blocked, busy, busy_after = asyncio.run(run())
    assert blocked
    assert busy
    assert not busy_after


class _Table:
    def __init__(self, path: Path) -> None:
        self.db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        self.data = self

    def _db_for_partition(self, partition: int) -> Any:
        return self.db


class _Sender:
    """Records what is sent; ``fail`` makes the acknowledgement fail."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[bytes | None, bytes, int | None]] = []
        self.flushed = 0

    async def add(self, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        self.sent.append((key, value, partition))

    async def add_many(self, records: list[tuple[bytes | None, bytes]],
                       partition: int | None = None) -> None:
        self.sent += [(key, value, partition) for key, value in records]

    async def flush(self) -> dict[int, int]:
        self.flushed += 1
        if self.fail:
            raise RuntimeError("changelog send failed")
        return {p: 41 + len(self.sent) for _, _, p in self.sent if p is not None}


def _meter(tmp_path: Path, fail: bool) -> tuple[PartitionMeter, _Table, _Sender]:
    entities, accounts = _Table(tmp_path / "e"), _Table(tmp_path / "a")
    out = _Sender(fail)
    pm = PartitionMeter(2, Settings(), entities, accounts, WorkerCounts(),
                        (out, _Sender()))  # type: ignore[arg-type]
    return pm, entities, out


def _dirty(pm: PartitionMeter) -> None:
    event = UsageEvent("VM.CREATE", "acct", "vm-1", "zone", 1_700_000_000_000)
    pm.take(pm.meter.apply([Record(event, Source("in", 0, 5), 1_700_000_000_000, None)]))


def test_state_goes_to_the_changelog_then_rocksdb_with_the_persisted_offset(
        tmp_path: Path) -> None:
    pm, entities, out = _meter(tmp_path, fail=False)
    _dirty(pm)
    asyncio.run(pm.flush())
    assert [(k, p) for k, _, p in out.sent] == [(b"vm-1", 2)]
    assert entities.db.get(b"vm-1") == out.sent[0][1]
    assert entities.db.get(OFFSET_KEY) == b"42"


def test_a_failed_changelog_send_raises_and_writes_nothing_locally(tmp_path: Path) -> None:
    pm, entities, _ = _meter(tmp_path, fail=True)
    _dirty(pm)
    with pytest.raises(RuntimeError, match="changelog send failed"):
        asyncio.run(pm.flush())
    assert entities.db.get(b"vm-1") is None
    assert entities.db.get(OFFSET_KEY) is None


def test_committer_runs_tails_in_order_and_reports_a_failure() -> None:
    from agents.commits import Committer

    async def run() -> tuple[list[str], list[str]]:
        ran: list[str] = []
        errors: list[str] = []

        def on_error(what: str) -> None:
            errors.append(what)

        committer = Committer(on_error, "batch", depth=1)

        def tail(name: str, delay: float, fail: bool = False) -> Any:
            async def run_tail() -> None:
                await asyncio.sleep(delay)
                if fail:
                    raise RuntimeError(name)
                ran.append(name)
            return run_tail

        await committer.submit(tail("a", 0.1))
        await committer.submit(tail("b", 0.0))
        await committer.submit(tail("c", 0.0, fail=True))
        await asyncio.wait_for(committer.drain(), 5)
        assert committer.idle
        return ran, errors

    ran, errors = asyncio.run(run())
    assert ran == ["a", "b"]
    assert errors == ["batch failed"]
