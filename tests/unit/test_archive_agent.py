"""The archive's loop in process (no broker): :meth:`agents.archive.Archive.consume` over a
real :class:`agents.fetches.FetchChannel` fed with fetches as the consumer hands them over
(aiokafka ``ConsumerRecord`` s of the usage topic, partition 0, offsets 0..n-1), batched by
:class:`agents.fetches.FetchBatches` as in the archive app: batches of at most
``archive_batch_records`` records, written to Parquet and checkpointed before their
partitions are marked processed. The real-broker runs (redelivery, kill -9 between files and
checkpoint, disk trouble) are in tests/integration/test_archive.py and test_disk_trouble.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

import agents.archive
from agents.archive import Archive
from agents.cli.exits import EXIT_FAILED
from agents.faustapi import EXIT_STUCK
from agents.fetches import Fetch, FetchBatches, FetchChannel
from metering.intervals import UsageInterval, make_interval
from metering.settings import Settings
from storage.archive import BatchResult

HOUR = 3_600_000
DAY0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def _rows(n: int) -> list[UsageInterval]:
    """``n`` hourly intervals of distinct VMs from DAY0 on (they span two UTC days)."""
    return [make_interval(
        usage_type=1, resource_id=f"vm-{i}", zone_id="zone-1", account_id=f"acct-{i % 3}",
        domain_id="dom-1", offering_id="so-1", template_id=None, start=DAY0 + i * HOUR,
        end=DAY0 + (i + 1) * HOUR, period_start=DAY0 + i * HOUR, final=False,
        close_reason="period", source_topic="metering.events", source_partition=0,
        source_offset=i) for i in range(n)]


def _settings(tmp_path: Path, batch: int = 10) -> Settings:
    return Settings(archive_dir=tmp_path / "archive", data_dir=tmp_path / "data",
                    archive_batch_records=batch, archive_flush_seconds=0.05)


async def _until(done: Any, deadline_s: float = 20.0) -> None:
    """Poll ``done()`` until true (the agent runs on the same loop), or fail at the deadline."""
    end = time.monotonic() + deadline_s
    while not done():
        assert time.monotonic() < end, "the archive agent did not get there in time"
        await asyncio.sleep(0.01)


def _records(values: Sequence[bytes], topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord(topic, 0, i, 0, 0, b"k", v, None, 1, len(v), [])
            for i, v in enumerate(values)]


def _feed(archive: Archive, values: Sequence[bytes], done: Any, fetch_records: int = 7,
          generation: int = 1, current: int = 1) -> list[tuple[TP, int]]:
    """Run :meth:`Archive.consume` with ``values`` (partition 0, offsets 0..n-1) handed over
    in fetches of ``fetch_records`` records read in consumer generation ``generation``
    (``current``: the group's generation now) until ``done()``; returns the marks made."""
    settings = archive.settings
    tp = TP(settings.usage_topic, 0)
    marks: list[tuple[TP, int]] = []

    async def run() -> None:
        channel = FetchChannel(settings.usage_topic)
        batches = FetchBatches(channel, settings.archive_batch_records,
                               settings.archive_flush_seconds, asyncio.Event())
        loop = asyncio.create_task(archive.consume(
            batches, lambda tp, offset: marks.append((tp, offset)), lambda: current))
        records = _records(values, settings.usage_topic)
        for first in range(0, len(records), fetch_records):
            await channel.put(Fetch(tp, records[first:first + fetch_records], generation))
        try:
            await _until(done)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    asyncio.run(run())
    return marks


def test_the_agent_writes_batches_to_parquet_and_checkpoints_them(tmp_path: Path) -> None:
    settings = _settings(tmp_path, batch=10)
    archive = Archive(settings)
    rows = _rows(25)
    marks = _feed(archive, [orjson.dumps(r.to_dict()) for r in rows],
                  lambda: archive.writer.checkpoint(settings.usage_topic, 0) == 24)

    tp = TP(settings.usage_topic, 0)
    offsets = [offset for t, offset in marks if t == tp]
    assert len(offsets) == len(marks)
    assert offsets == sorted(offsets)
    assert {10, 20, 25} <= set(offsets)  # fetches of 7 records, split at batches of 10
    assert archive.stats.rows == 25
    assert archive.stats.failures == 0
    assert not archive.stats.failing
    table = ds.dataset(settings.archive_dir, format="parquet",
                       partitioning="hive").to_table()
    assert sorted(table.column("interval_id").to_pylist()) == sorted(r.interval_id for r in rows)
    names = sorted(p.name for p in settings.archive_dir.rglob("*.parquet"))
    # batches of at most archive_batch_records, named by their first and last offsets
    # (the last batch's rows span two UTC days: one file per day)
    spans = sorted({tuple(int(x) for x in n.removesuffix(".parquet").split("-")[2:]) for n
                    in names})
    assert spans[0][0] == 0
    assert spans[-1][1] == 24
    assert all(last - first < 10 for first, last in spans)
    assert archive.health() == {"status": "ok", "last_success": archive.stats.last_success}


def test_a_disk_error_is_retried_until_the_batch_is_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, batch=100)
    archive = Archive(settings)
    monkeypatch.setattr(agents.archive, "RETRY_FIRST", 0.01)
    real_write = archive.writer.write_batch
    attempts: list[int] = []

    def failing_twice(topic: str, partition: int,
                      records: Sequence[tuple[int, bytes]]) -> BatchResult:
        attempts.append(len(records))
        if len(attempts) <= 2:
            raise OSError(28, "No space left on device")
        return real_write(topic, partition, records)

    monkeypatch.setattr(archive.writer, "write_batch", failing_twice)
    rows = _rows(5)
    _feed(archive, [orjson.dumps(r.to_dict()) for r in rows],
          lambda: archive.writer.checkpoint(settings.usage_topic, 0) == 4)

    assert archive.stats.failures == 2
    assert not archive.stats.failing  # the success cleared it
    assert archive.stats.rows == 5
    assert len(attempts) >= 3
    failures = {f.name: f for f in archive.families()}["metering_archive_write_failures"]
    assert failures.samples[0].value == 2


def test_a_batch_failing_otherwise_exits_without_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, batch=100)
    archive = Archive(settings)
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)  # the agent goes on: nothing else stops it
    monkeypatch.setattr(logging, "shutdown", lambda: None)

    def broken(topic: str, partition: int,
               records: Sequence[tuple[int, bytes]]) -> BatchResult:
        raise ValueError("a bug")

    monkeypatch.setattr(archive.writer, "write_batch", broken)
    marks = _feed(archive, [orjson.dumps(_rows(1)[0].to_dict())], lambda: exits)

    assert exits == [EXIT_STUCK]
    assert marks == []  # nothing may be committed past the batch
    assert archive.writer.checkpoint(settings.usage_topic, 0) == -1
    assert archive.stats.rows == 0


def test_fetches_of_an_older_generation_are_neither_written_nor_marked(
        tmp_path: Path) -> None:
    """Fetches read before a rebalance (an older consumer group generation) are read again
    from the committed offsets, maybe by another archive: writing them here would write
    their rows twice."""
    settings = _settings(tmp_path, batch=100)
    archive = Archive(settings)
    calls: list[int] = []
    real_next = FetchBatches.next

    async def counted(self: FetchBatches) -> Any:
        calls.append(1)  # the second call: the first batch was handled in full
        return await real_next(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FetchBatches, "next", counted)
        marks = _feed(archive, [orjson.dumps(r.to_dict()) for r in _rows(5)],
                      lambda: len(calls) >= 2, generation=1, current=2)

    assert marks == []
    assert archive.stats.rows == 0
    assert archive.writer.checkpoint(settings.usage_topic, 0) == -1
    assert not list(settings.archive_dir.rglob("*.parquet"))


def test_a_second_archive_on_the_same_directory_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path)
    settings.archive_dir.mkdir(parents=True)
    first = Archive(settings)
    first.take_lock()
    first.take_lock()  # held: a second call changes nothing
    with pytest.raises(SystemExit) as exc:
        Archive(settings).take_lock()
    assert exc.value.code == EXIT_FAILED
    assert "another archive process is writing" in capsys.readouterr().err
