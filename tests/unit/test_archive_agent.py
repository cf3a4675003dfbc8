"""The archive's agent in process (Faust's ``agent.test_context()``, no broker).

:func:`agents.archive.create_app` builds the app around an :class:`agents.archive.Archive`;
the test context feeds the agent's stream from an in-memory channel (each record with the
usage topic's name, partition 0 and the next offset), so the agent body runs as it does in
the worker: batches of at most ``archive_batch_records`` records, written to Parquet and
checkpointed before the batch is done. The real-broker runs (redelivery, kill -9 between
files and checkpoint, disk trouble) are in tests/integration/test_archive.py and
test_disk_trouble.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

import agents.archive
from agents.archive import Archive, create_app
from agents.cli.exits import EXIT_FAILED
from agents.faustapi import EXIT_STUCK
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


def _feed(archive: Archive, values: Sequence[bytes], done: Any) -> None:
    """Run the archive app's agent in a test context, put ``values`` (partition 0, offsets
    0..n-1), and wait until ``done()``."""
    app = create_app(archive.settings, archive)
    app.conf.store = "memory://"
    agent = app.agents["agents.archive.archive"]

    async def run() -> None:
        app.finalize()
        app.flow_control.resume()
        async with agent.test_context() as context:
            for value in values:
                await context.put(value, key=b"k", partition=0, wait=False)
            await _until(done)

    asyncio.run(run())


def test_the_agent_writes_batches_to_parquet_and_checkpoints_them(tmp_path: Path) -> None:
    settings = _settings(tmp_path, batch=10)
    archive = Archive(settings)
    rows = _rows(25)
    _feed(archive, [orjson.dumps(r.to_dict()) for r in rows],
          lambda: archive.writer.checkpoint(settings.usage_topic, 0) == 24)

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
    _feed(archive, [orjson.dumps(_rows(1)[0].to_dict())], lambda: exits)

    assert exits == [EXIT_STUCK]
    assert archive.writer.checkpoint(settings.usage_topic, 0) == -1
    assert archive.stats.rows == 0


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
