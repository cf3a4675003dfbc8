"""``metering compact``: one sorted, deduplicated file per closed day, atomic and idempotent."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agents.cli import main
from metering.intervals import UsageInterval, make_interval
from storage import compact
from storage.compact import (
    COMPACTED_NAME,
    LOCK_NAME,
    CompactOptions,
    OpenDayError,
    closed_cutoff,
    run_compact,
)
from storage.dataset import SORT_COLUMNS, to_table
from storage.parts import partition_dir, write_atomic

HOUR = 3_600_000
DAY_MS = 24 * HOUR
DAY0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z
DATES = ("2025-03-14", "2025-03-15", "2025-03-16")
NOW = DAY0 + 3 * DAY_MS + 5 * HOUR  # 2025-03-17T05:00Z: cutoff 2025-03-16, so 14 and 15 closed


def interval(
    i: int,
    day: int = 0,
    *,
    offset: int | None = None,
    topic: str = "events",
    hours: int = 1,
    domain: str | None = "dom-1",
) -> UsageInterval:
    """Distinct ``i`` give distinct ids; rows are deliberately not in sort order."""
    start = DAY0 + day * DAY_MS + ((i * 7) % 23) * HOUR
    return make_interval(
        usage_type=(1, 2, 6)[i % 3],
        resource_id=f"res-{i:03d}",
        zone_id="z1",
        account_id=f"acct-{(i * 5) % 4}",
        domain_id=domain,
        offering_id=None,
        template_id=None,
        start=start,
        end=start + hours * HOUR // 2,
        period_start=start,
        final=False,
        close_reason="period",
        source_topic=topic,
        source_partition=0,
        source_offset=i if offset is None else offset,
    )


def put(root: Path, date: str, name: str, rows: list[UsageInterval]) -> Path:
    """Write rows unsorted, as a writer that does not sort would."""
    path = partition_dir(root, date) / name
    write_atomic(to_table(rows), path)
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def rows_of(path: Path) -> list[dict[str, object]]:
    return pq.ParquetFile(path).read().to_pylist()


def content(row: dict[str, object]) -> tuple[object, ...]:
    return tuple(
        v
        for k, v in sorted(row.items())
        if k not in ("source_topic", "source_partition", "source_offset")
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three days: two closed with repeats across files, one open (relative to NOW)."""
    root = tmp_path / "ds"
    for day, date in enumerate(DATES):
        a = [interval(i, day) for i in range(0, 30)]
        b = [interval(i, day) for i in range(20, 45)]  # 20..29 exact repeats of a
        c = [interval(i, day, offset=1000 + i, topic="replay.jsonl") for i in range(40, 50)]
        put(root, date, "events-p0000-a.parquet", a[::-1])
        put(root, date, "events-p0000-b.parquet", b)
        put(root, date, "replay-x-00000.parquet", c)  # 40..44 repeat b with other lineage
    return root


def test_closed_days_become_one_sorted_file_without_repeats(dataset: Path) -> None:
    open_before = snapshot(partition_dir(dataset, DATES[2]))
    summary = run_compact(CompactOptions(dataset, now_ms=NOW))

    assert summary.cutoff == "2025-03-16"
    assert [d.date for d in summary.days] == list(DATES[:2])
    assert summary.open_days == [DATES[2]]
    assert summary.days_compacted == 2
    assert (summary.files_before, summary.files_after) == (6, 2)
    assert (summary.rows_before, summary.rows_after) == (2 * 65, 2 * 50)
    assert summary.duplicates == 2 * 15
    assert summary.conflicts == 0
    for day, date in enumerate(DATES[:2]):
        day_dir = partition_dir(dataset, date)
        assert [p.name for p in day_dir.iterdir()] == [COMPACTED_NAME]
        rows = rows_of(day_dir / COMPACTED_NAME)
        ids = [r["interval_id"] for r in rows]
        assert len(ids) == len(set(ids)) == 50
        keys = [tuple(r[c] for c in SORT_COLUMNS) for r in rows]
        assert keys == sorted(keys)
        want = {content(r) for r in to_table([interval(i, day) for i in range(50)]).to_pylist()}
        assert {content(r) for r in rows} == want
        # lineage-only repeats (40..44): the version with the highest source_offset is kept
        by_id = {r["interval_id"]: r for r in rows}
        assert by_id[interval(42, day).interval_id]["source_offset"] == 1042
    assert snapshot(partition_dir(dataset, DATES[2])) == open_before


def test_compaction_is_idempotent(dataset: Path) -> None:
    run_compact(CompactOptions(dataset, now_ms=NOW))
    first = {d: snapshot(partition_dir(dataset, d)) for d in DATES}
    again = run_compact(CompactOptions(dataset, now_ms=NOW))
    assert [d.action for d in again.days] == ["already-compacted"] * 2
    assert (again.rows_before, again.rows_after, again.duplicates) == (100, 100, 0)
    assert {d: snapshot(partition_dir(dataset, d)) for d in DATES} == first


def test_a_crash_between_write_and_removal_is_finished_by_a_rerun(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = tmp_path / "clean"
    shutil.copytree(dataset, clean)
    run_compact(CompactOptions(clean, dates=[DATES[0]], now_ms=NOW))

    class Crash(BaseException):
        pass

    def crash(_path: Path) -> None:
        raise Crash

    monkeypatch.setattr(compact, "fsync_dir", crash)  # right after the merged file's rename
    with pytest.raises(Crash):
        run_compact(CompactOptions(dataset, dates=[DATES[0]], now_ms=NOW))
    day_dir = partition_dir(dataset, DATES[0])
    names = sorted(p.name for p in day_dir.iterdir())
    assert COMPACTED_NAME in names
    assert len(names) == 4  # the merged file and the three old files, no temporary left
    monkeypatch.undo()

    again = run_compact(CompactOptions(dataset, dates=[DATES[0]], now_ms=NOW))
    assert again.days[0].action == "compacted"
    assert again.days[0].files_before == 4
    assert again.days[0].duplicates == 65  # all old rows repeat the merged file
    assert [p.name for p in day_dir.iterdir()] == [COMPACTED_NAME]
    assert rows_of(day_dir / COMPACTED_NAME) == rows_of(
        partition_dir(clean, DATES[0]) / COMPACTED_NAME
    )


def test_only_selected_days_are_touched_and_temp_files_ignored(dataset: Path) -> None:
    day_dir = partition_dir(dataset, DATES[0])
    (day_dir / f".{COMPACTED_NAME}.abc.tmp").write_bytes(b"half written")
    (day_dir / "_SUCCESS").write_bytes(b"")
    (day_dir / "notes.txt").write_text("not data")
    other = snapshot(partition_dir(dataset, DATES[1]))

    summary = run_compact(CompactOptions(dataset, dates=[DATES[0]], now_ms=NOW))
    assert [d.date for d in summary.days] == [DATES[0]]
    assert summary.open_days == []
    assert sorted(p.name for p in day_dir.iterdir()) == sorted(
        [f".{COMPACTED_NAME}.abc.tmp", "_SUCCESS", "notes.txt", COMPACTED_NAME]
    )
    assert snapshot(partition_dir(dataset, DATES[1])) == other


def test_open_days_are_refused_unless_forced(dataset: Path) -> None:
    open_dir = partition_dir(dataset, DATES[2])
    before = snapshot(open_dir)
    with pytest.raises(OpenDayError, match=DATES[2]):
        run_compact(CompactOptions(dataset, dates=[DATES[0], DATES[2]], now_ms=NOW))
    assert snapshot(open_dir) == before
    assert len(list(partition_dir(dataset, DATES[0]).iterdir())) == 3  # nothing done at all

    summary = run_compact(CompactOptions(dataset, dates=[DATES[2]], force=True, now_ms=NOW))
    assert summary.days_compacted == 1
    assert [p.name for p in open_dir.iterdir()] == [COMPACTED_NAME]


@pytest.mark.parametrize(("min_age", "closed"), [(0, 3), (1, 2), (2, 1), (3, 0)])
def test_min_age_days_moves_the_cutoff(dataset: Path, min_age: int, closed: int) -> None:
    summary = run_compact(CompactOptions(dataset, min_age_days=min_age, dry_run=True, now_ms=NOW))
    assert [d.date for d in summary.days] == list(DATES[:closed])
    assert summary.open_days == list(DATES[closed:])


def test_cutoff_uses_the_utc_date() -> None:
    assert closed_cutoff(DAY0, 1) == "2025-03-13"
    assert closed_cutoff(DAY0 + DAY_MS - 1, 1) == "2025-03-13"
    assert closed_cutoff(DAY0 + DAY_MS, 1) == "2025-03-14"


def test_dry_run_changes_nothing(dataset: Path) -> None:
    before = {d: snapshot(partition_dir(dataset, d)) for d in DATES}
    summary = run_compact(CompactOptions(dataset, dry_run=True, now_ms=NOW))
    assert summary.days_compacted == 2
    assert summary.duplicates == 30
    assert {d: snapshot(partition_dir(dataset, d)) for d in DATES} == before
    assert not (dataset / LOCK_NAME).exists()


def conflicted(root: Path) -> tuple[UsageInterval, UsageInterval]:
    """Day 0 holds two versions of one interval: a longer one from a later source record."""
    short = interval(7, 0, offset=7)
    long = interval(7, 0, offset=99, hours=2)._replace(interval_id=short.interval_id)
    put(root, DATES[0], "events-p0000-z.parquet", [long])
    return short, long


def test_conflicting_versions_leave_the_day_unchanged_by_default(dataset: Path) -> None:
    short, _long = conflicted(dataset)
    day_dir = partition_dir(dataset, DATES[0])
    before = snapshot(day_dir)
    summary = run_compact(CompactOptions(dataset, now_ms=NOW))
    day = summary.days[0]
    assert day.action == "conflicts"
    assert day.conflict_count == 1
    assert day.conflicts[0].interval_id == short.interval_id
    assert set(day.conflicts[0].columns) == {"end", "duration_ms", "raw_usage_hours"}
    assert summary.days_refused == [DATES[0]]
    assert snapshot(day_dir) == before
    assert summary.days[1].action == "compacted"  # other days still compacted


def test_zero_length_repeats_at_one_instant_are_no_conflict(tmp_path: Path) -> None:
    """Opened and closed twice within one second: two empty intervals share an id (rule 9)
    and differ in close_reason; they bill nothing, so the day is compacted, one kept."""
    start = DAY0 + 5 * HOUR

    def empty(reason: str, offset: int) -> UsageInterval:
        return make_interval(
            usage_type=1, resource_id="vm-1", zone_id="z1", account_id="acct-1",
            domain_id=None, offering_id=None, template_id=None, start=start, end=start,
            period_start=start, final=True, close_reason=reason, source_topic="cs",
            source_partition=0, source_offset=offset)

    first, second = empty("VM.STOP", 128), empty("VM.DESTROY", 142)
    assert first.interval_id == second.interval_id
    put(tmp_path, DATES[0], "a.parquet", [first, interval(1)])
    put(tmp_path, DATES[0], "b.parquet", [second])
    summary = run_compact(CompactOptions(tmp_path, now_ms=NOW))
    assert summary.days_refused == []
    assert summary.conflicts == 0
    rows = rows_of(partition_dir(tmp_path, DATES[0]) / COMPACTED_NAME)
    assert len(rows) == 2
    assert [r["close_reason"] for r in rows if r["duration_ms"] == 0] == ["VM.DESTROY"]


def test_keep_latest_keeps_the_highest_source_offset(dataset: Path) -> None:
    short, long = conflicted(dataset)
    summary = run_compact(CompactOptions(dataset, on_conflict="keep-latest", now_ms=NOW))
    assert summary.conflicts == 1
    assert summary.days_refused == []
    rows = rows_of(partition_dir(dataset, DATES[0]) / COMPACTED_NAME)
    kept = [r for r in rows if r["interval_id"] == short.interval_id]
    assert len(kept) == 1
    assert kept[0]["source_offset"] == 99
    assert kept[0]["duration_ms"] == long.duration_ms


def test_files_that_change_during_compaction_are_kept(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day_dir = partition_dir(dataset, DATES[0])
    target = day_dir / "events-p0000-b.parquet"
    real_read = compact.read_part

    def read_then_rewrite(path: Path):  # type: ignore[no-untyped-def]
        table = real_read(path)
        if path == target:  # a writer replaces the file (new inode) after we read it
            write_atomic(
                to_table([*(interval(i, 0) for i in range(20, 45)), interval(70, 0)]), target
            )
            put(dataset, DATES[0], "events-p0000-new.parquet", [interval(60, 0)])
        return table

    monkeypatch.setattr(compact, "read_part", read_then_rewrite)
    day = run_compact(CompactOptions(dataset, dates=[DATES[0]], now_ms=NOW)).days[0]
    assert day.files_kept == [str(target)]
    assert sorted(p.name for p in day_dir.iterdir()) == [
        "events-p0000-b.parquet",
        "events-p0000-new.parquet",
        COMPACTED_NAME,
    ]
    monkeypatch.undo()
    day = run_compact(CompactOptions(dataset, dates=[DATES[0]], now_ms=NOW)).days[0]
    assert [p.name for p in day_dir.iterdir()] == [COMPACTED_NAME]
    assert day.rows_after == 52  # 0..49, 70 from the rewrite and 60 from the new file


# ---------------------------------------------------------------------------- CLI


def cli(*args: str) -> int:
    return main(["compact", *args])


def test_cli_prints_a_summary_and_json(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the dataset's days are in 2025: with the real clock all three are closed
    assert cli(str(dataset), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would compact 3 day(s)" in out
    assert "duplicates dropped 45" in out
    assert cli(str(dataset), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["days_compacted"] == 3
    assert (summary["files_before"], summary["files_after"]) == (9, 3)
    assert (summary["rows_before"], summary["rows_after"]) == (195, 150)


def test_cli_exit_codes(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(str(tmp_path / "missing")) == 3
    assert "no such dataset directory" in capsys.readouterr().err
    assert cli(str(dataset), "--date", "2025-01-01") == 3
    with pytest.raises(SystemExit) as exc:
        cli(str(dataset), "--date", "2025-02-30")
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli(str(dataset), "--min-age-days", "-1")
    assert exc.value.code == 2
    # an open day: today's date in UTC
    import datetime as dt

    today = dt.datetime.now(dt.UTC).date().isoformat()
    put(dataset, today, "x.parquet", [interval(1)])
    assert cli(str(dataset), "--date", today) == 2
    assert "--force" in capsys.readouterr().err
    assert cli(str(dataset), "--date", today, "--force") == 0

    (partition_dir(dataset, DATES[1]) / "broken.parquet").write_bytes(b"not parquet")
    before = snapshot(partition_dir(dataset, DATES[1]))
    assert cli(str(dataset), "--date", DATES[1]) == 3
    assert "broken.parquet" in capsys.readouterr().err
    assert snapshot(partition_dir(dataset, DATES[1])) == before


def test_cli_exits_1_on_conflicts_and_when_locked(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conflicted(dataset)
    assert cli(str(dataset), "--date", DATES[0]) == 1
    assert "--on-conflict keep-latest" in capsys.readouterr().out
    with open(dataset / LOCK_NAME, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        assert cli(str(dataset), "--date", DATES[1]) == 1
        assert "another metering compact" in capsys.readouterr().err
    assert cli(str(dataset), "--date", DATES[0], "--on-conflict", "keep-latest") == 0
