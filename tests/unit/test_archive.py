"""The archive writer: durable batches, checkpoint, crash leftovers, bad usage records."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest

from metering.intervals import UsageInterval, make_interval
from metering.periods import PeriodGrid
from storage.archive import ArchiveWriter, parse_interval
from storage.parts import archive_part_name as part_name
from storage.parts import parse_archive_part_name as parse_part_name

HOUR = 3_600_000
DAY0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def interval(i: int, day: int = 0) -> UsageInterval:
    start = DAY0 + day * 24 * HOUR + (i % 24) * HOUR
    return make_interval(
        usage_type=1, resource_id=f"vm-{i}", zone_id="z1", account_id=f"acct-{i % 3}",
        domain_id=None, offering_id=None, template_id=None, start=start, end=start + HOUR,
        period_start=start, final=False, close_reason="period", source_topic="metering.events",
        source_partition=0, source_offset=i,
    )


def value(row: UsageInterval) -> bytes:
    return orjson.dumps(row.to_dict())


def records(rows: list[UsageInterval], first_offset: int = 0) -> list[tuple[int, bytes]]:
    return [(first_offset + n, value(r)) for n, r in enumerate(rows)]


def read_ids(root: Path) -> list[str]:
    table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table()
    return sorted(table.column("interval_id").to_pylist())


@pytest.fixture
def writer(tmp_path: Path) -> ArchiveWriter:
    return ArchiveWriter(tmp_path / "ds", PeriodGrid("hour", "UTC"))


def test_part_names_round_trip_and_sort_by_offset() -> None:
    name = part_name("usage", 3, 1200, 1299)
    assert parse_part_name(name) == ("usage", 3, 1200, 1299)
    assert parse_part_name("my.topic-x-p0001-" + "0" * 20 + "-" + "1".zfill(20) + ".jsonl") == (
        "my.topic-x", 1, 0, 1)
    assert part_name("usage", 0, 9, 10) < part_name("usage", 0, 10, 11)
    assert parse_part_name("part-compacted.parquet") is None


def test_parse_interval_round_trips_and_rejects_wrong_shapes() -> None:
    row = interval(5)
    assert parse_interval(value(row)) == row
    assert "JSON" in str(parse_interval(b"{oops"))
    assert parse_interval(b"[1]") == "not a JSON object"
    broken = row.to_dict() | {"start": "yesterday"}
    assert "start" in str(parse_interval(orjson.dumps(broken)))
    inverted = row.to_dict() | {"end": row.start - 1}
    assert isinstance(parse_interval(orjson.dumps(inverted)), str)


def test_batch_writes_one_file_per_day_and_a_checkpoint(writer: ArchiveWriter) -> None:
    rows = [interval(i, day=i % 2) for i in range(10)]
    result = writer.write_batch("usage", 2, records(rows, 100))
    assert result.rows == 10
    assert result.rejected == 0
    assert result.skipped == 0
    assert sorted(Path(f).parent.name for f in result.files) == [
        "usage_date=2025-03-14", "usage_date=2025-03-15"]
    assert all(Path(f).name == part_name("usage", 2, 100, 109) for f in result.files)
    assert result.bytes == sum(Path(f).stat().st_size for f in result.files)
    assert writer.checkpoint("usage", 2) == 109
    assert read_ids(writer.root) == sorted(r.interval_id for r in rows)
    assert not list(writer.root.rglob("*.tmp"))


def test_redelivered_records_are_skipped(writer: ArchiveWriter) -> None:
    rows = [interval(i) for i in range(6)]
    writer.write_batch("usage", 0, records(rows[:4]))
    again = writer.write_batch("usage", 0, records(rows))  # Kafka re-delivers from 0
    assert again.skipped == 4
    assert again.rows == 2
    fresh = ArchiveWriter(writer.root, writer.grid)  # a restarted process reads the checkpoint
    assert fresh.write_batch("usage", 0, records(rows)).skipped == 6
    assert read_ids(writer.root) == sorted(r.interval_id for r in rows)


def test_recover_removes_files_of_a_batch_that_crashed_before_its_checkpoint(
    writer: ArchiveWriter,
) -> None:
    rows = [interval(i, day=i % 2) for i in range(8)]
    writer.write_batch("usage", 1, records(rows[:4]))
    # the crash: part files of offsets 4..7 reached the disk, the checkpoint did not
    crashed = ArchiveWriter(writer.root, writer.grid)
    crashed._checkpoints[("usage", 1)] = 3
    result = crashed.write_batch("usage", 1, records(rows[4:], 4))
    writer.root.joinpath("_archive", "usage-1.json").write_bytes(
        orjson.dumps({"last_offset": 3}))
    other = writer.write_batch("usage", 5, records(rows[:2]))  # another partition: untouched
    restarted = ArchiveWriter(writer.root, writer.grid)
    removed = restarted.recover("usage", 1)
    assert sorted(removed) == sorted(result.files)
    assert all(Path(f).exists() for f in other.files)
    # re-delivery from offset 4 with a different batch boundary: no duplicates
    restarted.write_batch("usage", 1, records(rows[4:6], 4))
    restarted.write_batch("usage", 1, records(rows[6:], 6))
    ids = read_ids(writer.root)
    assert ids == sorted([r.interval_id for r in rows] + [r.interval_id for r in rows[:2]])


def test_records_that_are_not_intervals_go_to_rejected_files(writer: ArchiveWriter) -> None:
    batch = [(0, value(interval(0))), (1, b"not json"), (2, b'{"interval_id": 1}')]
    result = writer.write_batch("usage", 0, batch)
    assert result.rows == 1
    assert result.rejected == 2
    lines = (writer.root / "_rejected" / part_name("usage", 0, 0, 2).replace(
        ".parquet", ".jsonl")).read_bytes().splitlines()
    reasons = [orjson.loads(line) for line in lines]
    assert [r["offset"] for r in reasons] == [1, 2]
    assert reasons[0]["raw"] == "not json"
    assert reasons[0]["reason"]
    assert writer.checkpoint("usage", 0) == 2
    assert len(read_ids(writer.root)) == 1  # readers never see _rejected or _archive


def test_failed_write_is_not_checkpointed_and_a_retry_completes(writer: ArchiveWriter) -> None:
    rows = [interval(i, day=i % 2) for i in range(4)]
    writer.root.mkdir(parents=True)
    blocker = writer.root / "usage_date=2025-03-15"
    blocker.write_text("a file where a directory must be")  # disk trouble, even as root
    with pytest.raises(OSError, match="usage_date=2025-03-15"):
        writer.write_batch("usage", 0, records(rows))
    assert writer.checkpoint("usage", 0) == -1
    assert not (writer.root / "_archive").exists()
    blocker.unlink()
    result = writer.write_batch("usage", 0, records(rows))
    assert result.rows == 4
    assert writer.checkpoint("usage", 0) == 3
    assert read_ids(writer.root) == sorted(r.interval_id for r in rows)


def test_damaged_checkpoint_is_an_error_naming_the_file(writer: ArchiveWriter) -> None:
    path = writer.root / "_archive" / "usage-0.json"
    path.parent.mkdir(parents=True)
    path.write_text("{")
    with pytest.raises(OSError, match=r"usage-0\.json"):
        writer.checkpoint("usage", 0)


def test_checkpoint_never_moves_backwards_and_recovery_keeps_durable_files(
    writer: ArchiveWriter,
) -> None:
    """Issue 15 case 8: a writer behind (it read the checkpoint before another advanced
    it) stores a lower offset; a restart's recovery then deleted the other's durable rows."""
    rows = [interval(i, day=i % 2) for i in range(400)]
    behind = ArchiveWriter(writer.root, writer.grid)
    assert behind.checkpoint("usage", 0) == -1  # read (and cached) before the other advances
    writer.write_batch("usage", 0, records(rows[:200]))
    writer.write_batch("usage", 0, records(rows[200:], 200))
    assert writer.checkpoint("usage", 0) == 399
    late = behind.write_batch("usage", 0, records(rows[:150]))  # re-archives 0..149
    assert ArchiveWriter(writer.root, writer.grid).checkpoint("usage", 0) == 399
    restarted = ArchiveWriter(writer.root, writer.grid)
    assert restarted.recover("usage", 0) == []
    ids = read_ids(writer.root)  # every row kept (0..149 twice: compaction dedupes)
    assert set(ids) == {r.interval_id for r in rows}
    assert len(ids) == 550
    assert late.checkpoint == 399
    assert late.kept_higher
    assert behind.checkpoint("usage", 0) == 399


def test_checkpoint_store_is_monotonic(writer: ArchiveWriter) -> None:
    rows = [interval(i) for i in range(10)]
    writer.write_batch("usage", 3, records(rows, 100))
    assert writer._store_checkpoint("usage", 3, 50) == 109
    assert writer._store_checkpoint("usage", 3, 109) == 109
    assert orjson.loads((writer.root / "_archive" / "usage-3.json").read_bytes())[
        "last_offset"] == 109
    assert writer._store_checkpoint("usage", 3, 120) == 120
    assert ArchiveWriter(writer.root, writer.grid).checkpoint("usage", 3) == 120


def test_recovery_on_reassignment_keeps_the_batch_in_flight(
    writer: ArchiveWriter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files past the checkpoint are leftovers only at a partition's first assignment; a
    reassignment while this process writes a batch must not delete the batch's files."""
    rows = [interval(i, day=i % 2) for i in range(8)]
    assert writer.recover("usage", 0) == []  # first assignment
    writer.write_batch("usage", 0, records(rows[:4]))
    removed: list[list[str]] = []
    store = writer._store_checkpoint

    def recover_then_store(topic: str, partition: int, last: int) -> int:
        removed.append(writer.recover("usage", 0))  # files durable, checkpoint not yet
        return store(topic, partition, last)

    monkeypatch.setattr(writer, "_store_checkpoint", recover_then_store)
    result = writer.write_batch("usage", 0, records(rows[4:], 4))
    assert removed == [[]]
    assert all(Path(f).exists() for f in result.files)
    assert writer.checkpoint("usage", 0) == 7
    assert read_ids(writer.root) == sorted(r.interval_id for r in rows)


YEAR0 = -62_135_645_400_000  # "0001-01-01 00:30:00 +1400": 0000-12-31T10:30:00Z


def shifted(row: UsageInterval, start: int, period_start: int | None = None) -> bytes:
    return orjson.dumps(row.to_dict() | {
        "start": start, "end": start + HOUR, "duration_ms": HOUR,
        "period_start": start if period_start is None else period_start})


def test_rows_with_instants_the_archive_cannot_place_are_rejected_not_fatal(
    tmp_path: Path,
) -> None:
    """Issue 15 case 3: a year-0 instant made the batch (and every restart) fail."""
    writer = ArchiveWriter(tmp_path / "ds", PeriodGrid("hour", "Pacific/Kiritimati"))
    good = [interval(i) for i in range(4)]
    bad = interval(9)
    batch = [
        (0, value(good[0])),
        (1, shifted(bad, YEAR0)),  # year 0
        (2, value(good[1])),
        (3, shifted(bad, -5 * HOUR)),  # before 1970
        (4, shifted(bad, DAY0, period_start=YEAR0)),  # only period_start out of range
        (5, shifted(bad, 10**16)),  # beyond year 9999
        (6, shifted(bad, 253_402_300_000_000 - HOUR)),  # 9999-12-31 UTC: year 10000 at +14
        (7, orjson.dumps(bad.to_dict() | {"usage_type": 2**31})),  # not an int32
        (8, value(good[2])),
        (9, orjson.dumps(bad.to_dict() | {"source_partition": -1})),
        (10, value(good[3])),
        (11, shifted(bad, 253_402_300_000_000 - HOUR)),  # the same instant again: rejected too
    ]
    result = writer.write_batch("usage", 0, batch)
    assert result.rows == 4
    assert result.rejected == 8
    assert writer.checkpoint("usage", 0) == 11
    assert read_ids(writer.root) == sorted(r.interval_id for r in good)
    lines = [orjson.loads(line) for line in (writer.root / "_rejected" / part_name(
        "usage", 0, 0, 11).replace(".parquet", ".jsonl")).read_bytes().splitlines()]
    assert [r["offset"] for r in lines] == [1, 3, 4, 5, 6, 7, 9, 11]
    assert all(r["topic"] == "usage" and r["partition"] == 0 for r in lines)
    reasons = [r["reason"] for r in lines]
    assert "'start' out of range" in reasons[0]
    assert "'start' out of range" in reasons[1]
    assert "'period_start' out of range" in reasons[2]
    assert "'start' out of range" in reasons[3]
    assert "no usage_date" in reasons[4]
    assert "'usage_type' out of range" in reasons[5]
    assert "'source_partition' out of range" in reasons[6]
    assert "no usage_date" in reasons[7]


def test_one_archive_per_directory_lock(tmp_path: Path) -> None:
    from storage.archive import LOCK_NAME
    from storage.compact import LOCK_NAME as COMPACT_LOCK
    from storage.dataset import DirectoryLock, LockHeldError

    root = tmp_path / "ds"
    first = DirectoryLock(root / LOCK_NAME, "metering archive, pid 1 on host-a")
    with pytest.raises(LockHeldError) as info:
        DirectoryLock(root / LOCK_NAME, "metering archive, pid 2 on host-b")
    assert info.value.holder == "metering archive, pid 1 on host-a"
    assert str(root / LOCK_NAME) in str(info.value)
    with DirectoryLock(root / COMPACT_LOCK, "compact"):  # compaction runs beside the archive
        pass
    first.release()
    with DirectoryLock(root / LOCK_NAME, "metering archive, pid 2 on host-b"):
        assert (root / LOCK_NAME).read_text() == "metering archive, pid 2 on host-b"
