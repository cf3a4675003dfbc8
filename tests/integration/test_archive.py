"""The archive worker on a real broker: kill -9 at the worst moments loses nothing, and the
compacted dataset holds every interval exactly once, readable by pandas, pyarrow and DuckDB."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from metering.intervals import UsageInterval, make_interval
from metering.periods import PeriodGrid
from storage.archive import ArchiveWriter
from storage.parts import parse_archive_part_name as parse_part_name
from tests.integration.conftest import _create_topic
from tests.integration.kafkautil import end_offsets, produce
from tests.integration.workerproc import WorkerProc

HOUR = 3_600_000
DAY0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z
PARTITIONS = 2


def intervals(n: int) -> list[UsageInterval]:
    """``n`` distinct hourly intervals over 3 days, 7 accounts."""
    rows = []
    for i in range(n):
        start = DAY0 + (i % 72) * HOUR
        rows.append(make_interval(
            usage_type=1 + i % 2, resource_id=f"vm-{i // 72}", zone_id="zone-1",
            account_id=f"acct-{i % 7}", domain_id="dom-1", offering_id="so-1",
            template_id=None, start=start, end=start + HOUR, period_start=start, final=False,
            close_reason="period", source_topic="metering.events", source_partition=0,
            source_offset=i))
    return rows


def produce_usage(bootstrap: str, topic: str, rows: list[UsageInterval]) -> int:
    """Every row once, then the first 200 again (a worker's redelivery repeats)."""
    body = [(r.account_id.encode(), orjson.dumps(r.to_dict())) for r in rows]
    return produce(bootstrap, topic, body + body[:200])


def checkpoints(root: Path, topic: str) -> dict[int, int]:
    writer = ArchiveWriter(root, PeriodGrid("hour", "UTC"))
    return {p: writer.checkpoint(topic, p) for p in range(PARTITIONS)}


def wait_archived(w: WorkerProc, ends: dict[int, int], deadline_s: float = 90.0) -> None:
    """Poll the checkpoints until every partition is archived up to its end offset."""
    want = {p: end - 1 for p, end in ends.items()}
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert w.process is not None
        if w.process.poll() is not None:
            raise AssertionError(f"archive exited {w.process.returncode}:\n{w.tail()}")
        if checkpoints(w.archive_dir, w.usage_topic) == want:
            return
        time.sleep(0.2)  # poll with a deadline
    raise AssertionError(f"not archived in {deadline_s}s: "
                         f"{checkpoints(w.archive_dir, w.usage_topic)} != {want}\n{w.tail()}")


def wait_exit(w: WorkerProc, deadline_s: float = 90.0) -> int:
    assert w.process is not None
    try:
        return w.process.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"archive did not crash as injected:\n{w.tail()}") from None


def wait_archive_lag_zero(w: WorkerProc, deadline_s: float = 60.0) -> str:
    """Poll /metrics until the archive group's lag is measured at 0 on every partition."""
    end = time.monotonic() + deadline_s
    while True:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{w.web_port}/metrics", timeout=5).read().decode()
        lags = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("metering_consumer_lag_records{")]
        if len(lags) == PARTITIONS and not any(lags):
            assert 'role="archive"' in text
            return text
        assert time.monotonic() < end, f"archive lag not 0: {lags}\n{w.tail()}"
        time.sleep(0.25)  # poll with a deadline


def dataset_ids(root: Path) -> list[str]:
    table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table(
        columns=["interval_id"])
    return table.column("interval_id").to_pylist()


@pytest.fixture
def archive_factory(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str],
) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []
    app = unique_name("arch")

    def make(fault: str | None = None, **extra: str) -> WorkerProc:
        w = WorkerProc(kafka_bootstrap, app, "unused-input", tmp_path / "data",
                       partitions=PARTITIONS, command="archive", fault=fault,
                       extra={"METERING_ARCHIVE_BATCH_RECORDS": "400",
                              "METERING_METRICS_INTERVAL": "0.5",
                              "METERING_ARCHIVE_FLUSH_SECONDS": "0.3",
                              **{k.upper(): v for k, v in extra.items()}})
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


@pytest.mark.kafka
@pytest.mark.parametrize("fault", ["archive_after_files", "archive_after_checkpoint"])
def test_kill9_loses_nothing_and_compaction_leaves_each_interval_once(
    kafka_bootstrap: str, archive_factory: Callable[..., WorkerProc], fault: str,
) -> None:
    crashing = archive_factory(fault=fault)
    asyncio.run(_create_topic(kafka_bootstrap, crashing.usage_topic, PARTITIONS, {}))
    rows = intervals(3000)
    produced = produce_usage(kafka_bootstrap, crashing.usage_topic, rows)
    ends = end_offsets(kafka_bootstrap, crashing.usage_topic)
    assert sum(ends.values()) == produced

    crashing.start()
    assert wait_exit(crashing) == -9  # SIGKILL at the injected point
    parts = [parse_part_name(p.name) for p in crashing.archive_dir.rglob("*.parquet")]
    assert parts, "the crash happened after files were written"
    cps = checkpoints(crashing.archive_dir, crashing.usage_topic)
    past_checkpoint = [p for p in parts if p and p[2] > cps[p[1]]]
    assert bool(past_checkpoint) == (fault == "archive_after_files")

    restarted = archive_factory()
    restarted.start()
    wait_archived(restarted, ends)
    metrics = wait_archive_lag_zero(restarted)
    assert restarted.stop() == 0

    # Nothing lost, nothing doubled by the crash: one row per record on the topic.
    ids = Counter(dataset_ids(restarted.archive_dir))
    assert sum(ids.values()) == produced
    assert set(ids) == {r.interval_id for r in rows}
    assert "metering_archive_files_written_total" in metrics
    if fault == "archive_after_checkpoint":
        skipped = next(line for line in metrics.splitlines()
                       if line.startswith("metering_archive_records_skipped_total"))
        assert float(skipped.split()[-1]) > 0  # re-delivered, recognised as archived

    # Compaction: each interval once, one file per day, contract types.
    out = subprocess.run(
        [sys.executable, "-m", "agents", "compact", str(restarted.archive_dir),
         "--min-age-days", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ids_after = Counter(dataset_ids(restarted.archive_dir))
    assert ids_after == Counter({r.interval_id: 1 for r in rows})
    days = sorted(restarted.archive_dir.glob("usage_date=*"))
    assert [d.name for d in days] == [
        "usage_date=2025-03-14", "usage_date=2025-03-15", "usage_date=2025-03-16"]
    assert all(len(list(d.glob("*.parquet"))) == 1 for d in days)
    check_readers(restarted.archive_dir, rows)


def check_readers(root: Path, rows: list[UsageInterval]) -> None:
    """pandas, pyarrow.dataset and DuckDB read the dataset with the contract's types."""
    import pandas as pd

    total = sum(r.raw_usage_hours for r in rows)
    table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table()
    assert table.schema.field("start").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("usage_type").type == pa.int32()
    frame = pd.read_parquet(root)
    assert str(frame["end"].dtype) == "datetime64[ms, UTC]"
    assert frame["raw_usage_hours"].sum() == pytest.approx(total)
    import duckdb

    con = duckdb.connect()
    got = con.execute(
        "SELECT count(*), count(DISTINCT interval_id), sum(raw_usage_hours), "
        "typeof(any_value(start)) FROM read_parquet(?, hive_partitioning = true)",
        [f"{root}/*/*.parquet"]).fetchone()
    assert got is not None
    assert got[0] == got[1] == len(rows)
    assert got[2] == pytest.approx(total)
    assert got[3] == "TIMESTAMP WITH TIME ZONE"


def wait_refused(w: WorkerProc, deadline_s: float = 60.0) -> int:
    """The exit code of an archive that must stop by itself at start-up."""
    assert w.process is not None
    try:
        return w.process.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"second archive still running after {deadline_s}s (not "
                             f"refused):\n{w.tail()}") from None


@pytest.mark.kafka
def test_second_archive_on_one_directory_is_refused_and_nothing_is_lost(
    kafka_bootstrap: str, archive_factory: Callable[..., WorkerProc],
) -> None:
    """Issue 15 case 8: two archives on one directory lowered each other's checkpoints and
    a recovery deleted durable, committed files. Now the second is refused at start-up."""
    first = archive_factory()
    topic = first.usage_topic
    asyncio.run(_create_topic(kafka_bootstrap, topic, PARTITIONS, {}))
    rows = intervals(1200)
    body = [(r.account_id.encode(), orjson.dumps(r.to_dict())) for r in rows]
    produced = produce(kafka_bootstrap, topic, body[:400])
    first.start().wait_ready()
    assert first.process is not None

    second = archive_factory()  # same app id (an operator scaling out), same directory
    assert second.archive_dir == first.archive_dir
    second.start()
    assert wait_refused(second) == 1, second.tail()
    refusal = second.tail()
    assert "another archive process is writing" in refusal
    assert str(first.archive_dir) in refusal
    assert f"pid {first.process.pid} " in refusal  # the holder, as it wrote itself

    produced += produce(kafka_bootstrap, topic, body[400:])
    ends = end_offsets(kafka_bootstrap, topic)
    assert sum(ends.values()) == produced
    wait_archived(first, ends)
    wait_archive_lag_zero(first)
    assert first.stop() == 0, first.tail()
    assert Counter(dataset_ids(first.archive_dir)) == Counter(
        {r.interval_id: 1 for r in rows})

    # The lock goes with its process: the next archive starts, finds everything archived
    # and removes nothing.
    files = sorted(p.name for p in first.archive_dir.rglob("*.parquet"))
    third = archive_factory()
    third.start().wait_ready()
    wait_archived(third, ends)
    wait_archive_lag_zero(third)
    assert third.stop() == 0, third.tail()
    assert sorted(p.name for p in first.archive_dir.rglob("*.parquet")) == files
    assert Counter(dataset_ids(first.archive_dir)) == Counter(
        {r.interval_id: 1 for r in rows})


YEAR0_MS = -62_135_645_400_000
"""``0001-01-01 00:30:00 +1400``: 0000-12-31T10:30:00Z, a UTC instant in year 0."""


def with_start(row: UsageInterval, start: int, period_start: int | None = None) -> bytes:
    return orjson.dumps(row.to_dict() | {
        "start": start, "end": start + HOUR, "duration_ms": HOUR,
        "period_start": start if period_start is None else period_start})


@pytest.mark.kafka
def test_usage_rows_the_archive_cannot_place_are_rejected_and_the_rest_archived(
    kafka_bootstrap: str, archive_factory: Callable[..., WorkerProc],
) -> None:
    """Issue 15 case 3 (archive half): a year-0 or pre-1970 instant on the usage topic made
    every batch fail (exit 70 on every start, no valid row archived)."""
    archive = archive_factory()
    topic = archive.usage_topic
    asyncio.run(_create_topic(kafka_bootstrap, topic, PARTITIONS, {}))
    rows = intervals(600)
    bad_values = [
        with_start(rows[0], YEAR0_MS),  # year 0
        with_start(rows[1], -7 * HOUR),  # before 1970
        with_start(rows[2], DAY0, period_start=YEAR0_MS),
        with_start(rows[3], -1),
    ]
    body: list[tuple[bytes | None, bytes]] = [
        (r.account_id.encode(), orjson.dumps(r.to_dict())) for r in rows]
    for n, bad in enumerate(bad_values):  # among the valid rows, on both partitions
        body.insert(50 + 130 * n, (f"acct-{n}".encode(), bad))
    produced = produce(kafka_bootstrap, topic, body)
    ends = end_offsets(kafka_bootstrap, topic)
    assert sum(ends.values()) == produced

    archive.start()
    wait_archived(archive, ends)
    wait_archive_lag_zero(archive)
    assert archive.stop() == 0, archive.tail()

    assert Counter(dataset_ids(archive.archive_dir)) == Counter(
        {r.interval_id: 1 for r in rows})
    rejected = [orjson.loads(line)
                for path in sorted((archive.archive_dir / "_rejected").glob("*.jsonl"))
                for line in path.read_bytes().splitlines()]
    assert sorted(r["raw"].encode() for r in rejected) == sorted(bad_values)
    for r in rejected:
        assert "out of range" in r["reason"], r
        assert r["topic"] == topic
        assert 0 <= r["offset"] < ends[r["partition"]]
