"""Replay in three processes (:mod:`storage.pipeline`) writes exactly what one process
writes: the same rows in the same files in the same order, the same summary, the same rejects
bytes, the same progress reports and the same errors; a child that dies is named, and nothing
is left behind (no child process, no staging directory)."""

from __future__ import annotations

import gzip
import itertools
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agents.cli import main
from metering.eventtime import parse_iso_instant
from metering.intervals import UsageInterval
from storage.dataset import ARROW_SCHEMA, to_batch
from storage.errors import InputError, OutputError, ReplayProcessError
from storage.replay import (
    PROCESSES_ENV,
    DatasetWriter,
    ReplayOptions,
    ReplayProgress,
    replay_processes,
    run_replay,
)
from tests.unit.test_contract_rules import ACCT, HOUR, T0, usage


def simulate(path: Path, *, seed: int, accounts: int, days: int, fmt: str = "jsonl") -> str:
    """A simulated cloud's trace at ``path``; returns its ``until`` (ISO text)."""
    truth = path.with_suffix(".truth.json")
    assert main(["simulate", "--accounts", str(accounts), "--days", str(days), "--seed",
                 str(seed), "--format", fmt, "--malformed", "0.003", "--output", str(path),
                 "--truth", str(truth), "--no-progress"]) == 0
    until: str = orjson.loads(truth.read_bytes())["until"]
    return until


def replay(tmp: Path, name: str, processes: int, inputs: list[str], **kw: Any
           ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], bytes,
                      list[ReplayProgress]]:
    """Run a replay; (summary without timings, file -> rows in file order, rejects bytes,
    progress reports)."""
    out, rejects = tmp / f"{name}-out", tmp / f"{name}-rejects.jsonl"
    progress: list[ReplayProgress] = []
    summary = run_replay(ReplayOptions(inputs=inputs, output=out, rejects=rejects,
                                       processes=processes, **kw), progress.append)
    got = summary.as_dict()
    del got["seconds"], got["records_per_second"]
    files = {str(Path(f).relative_to(out)): pq.read_table(f).to_pylist()
             for f in summary.files_written}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == sorted(files)
    assert not [p for p in out.iterdir() if p.name.startswith(".replay-")]  # staging removed
    return got, files, rejects.read_bytes(), progress


def assert_progress(progress: list[ReplayProgress]) -> None:
    assert [p.done for p in progress].count(True) == 1
    assert progress[-1].done
    for a, b in itertools.pairwise(progress):
        assert a.records <= b.records
        assert a.bytes_read <= b.bytes_read
    # the horizon cut's reports after the input was read, then one while the last parts
    # are written, then the last report
    cut = [i for i, p in enumerate(progress) if p.horizon is not None]
    assert cut == list(range(cut[0], len(progress) - 2))
    assert [i for i, p in enumerate(progress) if p.writing] == [len(progress) - 2]
    assert [getattr(progress[i].horizon, "done", None) for i in cut].count(True) == 1
    assert {(progress[i].records, progress[i].bytes_read) for i in cut} == \
        {(progress[-1].records, progress[-1].bytes_read)}


@pytest.mark.parametrize(("fmt", "period", "tz"), [("kcat", "day", "Asia/Kolkata"),
                                                   ("jsonl", "hour", "UTC")])
def test_three_processes_write_what_one_writes(tmp_path: Path, fmt: str, period: str,
                                               tz: str) -> None:
    trace = tmp_path / "trace.jsonl"
    until = simulate(trace, seed=7, accounts=60, days=5, fmt=fmt)
    raw = trace.read_bytes()
    # blank lines and CRLF endings too (the reader's counters and non-plain blocks)
    trace.write_bytes(raw.replace(b"\n", b"\r\n", 50).replace(b"\n", b"\n\n", 30))
    options: dict[str, Any] = {"period": period, "timezone": tz,
                               "until_ms": parse_iso_instant(until) - 6 * HOUR}
    one = replay(tmp_path, "one", 1, [str(trace)], **options)
    three = replay(tmp_path, "three", 3, [str(trace)], **options)
    for counter in ("intervals_by_usage_type", "rejects_by_reason", "blank_lines",
                    "after_until"):
        assert one[0][counter], counter
    assert one[0] == three[0]  # every counter, outcomes, hours
    assert list(one[1]) == list(three[1])  # file names, in order
    assert one[1] == three[1]  # rows, in file order
    assert one[2]
    assert one[2] == three[2]  # rejects bytes
    assert [(p.records, p.bytes_read, p.total_bytes, p.horizon, p.writing) for p in one[3]] \
        == [(p.records, p.bytes_read, p.total_bytes, p.horizon, p.writing) for p in three[3]]
    assert_progress(one[3])
    assert_progress(three[3])
    assert not multiprocessing.active_children()


def test_regions_and_gzip_in_three_processes(tmp_path: Path) -> None:
    east, west = tmp_path / "east.jsonl", tmp_path / "west.jsonl.gz"
    simulate(east, seed=3, accounts=20, days=3)
    simulate(tmp_path / "w.jsonl", seed=4, accounts=20, days=3)
    west.write_bytes(gzip.compress((tmp_path / "w.jsonl").read_bytes()))
    kw: dict[str, Any] = {"regions": ["east", "west"], "period": "day"}
    one = replay(tmp_path, "one", 1, [str(east), str(west)], **kw)
    three = replay(tmp_path, "three", 3, [str(east), str(west)], **kw)
    assert {r["region"] for rows in one[1].values() for r in rows} == {"east", "west"}
    assert one[:3] == three[:3]


def test_domains_learnt_late_are_filled_in_the_writer_process(tmp_path: Path) -> None:
    from tests.unit.test_contract_rules import action

    lines = []
    for i in range(3000):
        lines += [usage("VM.CREATE", f"vm-{i}", T0), usage("VM.DESTROY", f"vm-{i}", T0 + HOUR)]
    lines.append(action("ACCOUNT.CREATE", ACCT, T0 - HOUR, Domain="dom-1"))
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    one = replay(tmp_path, "one", 1, [str(trace)])
    three = replay(tmp_path, "three", 3, [str(trace)])
    assert {r["domain_id"] for rows in three[1].values() for r in rows} == {"dom-1"}
    assert one[:3] == three[:3]


@pytest.mark.parametrize("processes", [1, 3])
def test_errors_are_the_same_in_both(tmp_path: Path, processes: int) -> None:
    trace = tmp_path / "trace.jsonl"
    simulate(trace, seed=5, accounts=10, days=2)
    with pytest.raises(InputError, match=r"cannot read .*missing\.jsonl: no such file"):
        run_replay(ReplayOptions(inputs=[str(tmp_path / "missing.jsonl")],
                                 output=tmp_path / "o1", processes=processes))
    # one file name (lane) read as two regions: found by the reader mid-run
    with pytest.raises(InputError, match=r"records of trace.jsonl/0 \(topic/partition\) come "
                                         "from inputs of regions a and b"):
        run_replay(ReplayOptions(inputs=[str(trace), str(trace)], regions=["a", "b"],
                                 output=tmp_path / "o2", processes=processes))
    # a file where a day's directory must go: found by the writer when it publishes
    out = tmp_path / "o3"
    out.mkdir()
    day = run_replay(ReplayOptions(inputs=[str(trace)], output=tmp_path / "o4")).files_written
    (out / Path(day[0]).parent.name).write_text("in the way")
    with pytest.raises(OutputError, match=f"cannot write the dataset under {out}: .*File exists"):
        run_replay(ReplayOptions(inputs=[str(trace)], output=out, processes=processes))
    assert [p.name for p in out.iterdir()] == [Path(day[0]).parent.name]  # staging removed
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("victim", ["reader", "writer"])
def test_a_killed_child_is_named_and_nothing_hangs(tmp_path: Path, victim: str) -> None:
    trace = tmp_path / "trace.jsonl"
    simulate(trace, seed=6, accounts=300, days=10)
    # more blocks than the pipe holds: the reader is still busy at the first progress report
    assert trace.stat().st_size > 16 << 20
    killed: list[int] = []

    def kill(progress: ReplayProgress) -> None:
        if not killed:
            child = next(p for p in multiprocessing.active_children()
                         if p.name == f"metering-replay-{victim}")
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)

    out = tmp_path / "out"
    with pytest.raises(ReplayProcessError) as err:
        run_replay(ReplayOptions(inputs=[str(trace)], output=out, processes=3), kill)
    assert str(err.value).startswith(
        f"the replay's {victim} process (pid {killed[0]}) was killed by signal SIGKILL "
        f"before it finished; the dataset under {out} may be incomplete: run the replay "
        "again")
    assert list(out.iterdir()) == []  # staging removed, nothing published
    assert not multiprocessing.active_children()


def test_how_many_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = tmp_path / "small.jsonl"
    small.write_bytes(usage("VM.CREATE") + b"\n")
    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    opts = ReplayOptions(inputs=[str(small)], output=tmp_path)
    assert replay_processes(opts) == 1  # small: not worth starting processes
    big = tmp_path / "big.jsonl"
    with big.open("wb") as fh:
        fh.truncate(64 << 20)
    assert replay_processes(ReplayOptions(inputs=[str(big)], output=tmp_path)) == 3
    assert replay_processes(ReplayOptions(inputs=["-"], output=tmp_path, processes=3)) == 1
    monkeypatch.setenv(PROCESSES_ENV, "3")
    assert replay_processes(opts) == 3
    assert replay_processes(ReplayOptions(inputs=[str(big)], output=tmp_path,
                                          processes=1)) == 1  # the option wins
    monkeypatch.setenv(PROCESSES_ENV, "2")
    with pytest.raises(ReplayProcessError, match="METERING_REPLAY_PROCESSES='2': give 1"):
        replay_processes(opts)


def test_to_batch_is_arrows_struct_conversion(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    simulate(trace, seed=8, accounts=5, days=2)
    out = tmp_path / "out"
    summary = run_replay(ReplayOptions(inputs=[str(trace)], output=out, processes=1))
    rows = [UsageInterval(**r) for f in summary.files_written
            for r in pq.read_table(f).to_pylist()]
    for r in rows[:3]:  # timestamps read back as datetimes: back to ms
        assert r.start is not None
    plain = [r._replace(start=int(r.start.timestamp() * 1000),  # type: ignore[attr-defined]
                        end=int(r.end.timestamp() * 1000),  # type: ignore[attr-defined]
                        period_start=int(r.period_start.timestamp() * 1000))  # type: ignore[attr-defined]
             for r in rows]
    # Arrow's own conversion of whole rows as structs: the reference for the column path
    want = pa.RecordBatch.from_struct_array(
        pa.array(plain, type=pa.struct(list(ARROW_SCHEMA))))  # type: ignore[arg-type]
    assert to_batch(plain).equals(want)
    assert to_batch(orjson.loads(orjson.dumps([tuple(r) for r in plain]))).equals(want)


def test_parts_are_cut_at_part_rows_in_arrival_order(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.replay

    monkeypatch.setattr(storage.replay, "PART_ROWS", 3 * 4096)
    lines, n = [], 30_000
    for i in range(n):  # one day's rows, more than one part
        lines += [usage("VM.CREATE", f"vm-{i:05d}", T0 + i),
                  usage("VM.DESTROY", f"vm-{i:05d}", T0 + HOUR)]
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    summary = run_replay(ReplayOptions(inputs=[str(trace)], output=tmp_path / "out",
                                       period="day", processes=1))
    parts = [pq.read_table(f).column("resource_id").to_pylist()
             for f in summary.files_written]
    assert [len(p) for p in parts] == [3 * 4096, 3 * 4096, n - 6 * 4096]
    arrival = [f"vm-{i:05d}" for i in range(n)]  # the engine emits in record order
    for k, part in enumerate(parts):
        assert sorted(part) == arrival[k * 3 * 4096:(k + 1) * 3 * 4096]


def test_rows_held_past_the_bound_go_to_staged_files_and_change_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--until`` far past the input every open resource gets a row per period, spread
    over many dates whose parts never fill: the writer moves the rows it holds past
    ``HELD_ROWS`` to staged files and reads them back when it writes their part. Files,
    rows (in file order) and summary are those of a run that held everything."""
    import storage.replay

    trace = tmp_path / "trace.jsonl"
    until = simulate(trace, seed=11, accounts=40, days=3)
    options: dict[str, Any] = {"period": "day",
                               "until_ms": parse_iso_instant(until) + 40 * 24 * HOUR}
    held = replay(tmp_path, "held", 1, [str(trace)], **options)
    bound, moves, after_spill = 400, [], []
    monkeypatch.setattr(storage.replay, "HELD_ROWS", bound)
    move, spill = DatasetWriter._move_held, DatasetWriter.spill

    def counted_move(self: DatasetWriter, tmpdir: Path) -> None:
        moves.append(self.held)
        move(self, tmpdir)

    def checked_spill(self: DatasetWriter, tmpdir: Path, workers: int = 1) -> None:
        spill(self, tmpdir, workers)
        after_spill.append(self.held)

    monkeypatch.setattr(DatasetWriter, "_move_held", counted_move)
    monkeypatch.setattr(DatasetWriter, "spill", checked_spill)
    moved = replay(tmp_path, "moved", 1, [str(trace)], **options)
    assert len(moves) >= 2  # the rows went to staged files (the horizon cut's among them)
    assert max(after_spill) <= bound
    assert moved[0] == held[0]  # counters, outcomes, hours, files
    assert list(moved[1]) == list(held[1])  # file names, in order
    assert moved[1] == held[1]  # rows, in file order


def _wire_rows() -> list[UsageInterval]:
    from metering.intervals import make_interval

    base = make_interval(usage_type=1, resource_id="vm-1", zone_id="z1", account_id=ACCT,
                         domain_id="d1", offering_id="o1", template_id=None, start=T0,
                         end=T0 + HOUR, period_start=T0, final=True, close_reason="VM.STOP",
                         source_topic="t", source_partition=0, source_offset=7)
    return [base, base._replace(domain_id=None, zone_id="", offering_id="ö-𝄞", final=False,
                                region="r1", source_offset=2**40, raw_usage_hours=0.1),
            base._replace(account_id="", resource_id="x" * 300, region=None)]


@pytest.mark.parametrize("change", [
    {}, {"account_id": "a\0b"}, {"account_id": "lone \ud800"}, {"source_partition": 2**31},
    {"source_offset": 2**63}, {"template_id": 5}, {"final": 1}, {"raw_usage_hours": 1},
    {"domain_id": None, "zone_id": None, "offering_id": None, "template_id": None},
])
def test_rows_cross_to_the_writer_as_they_left(change: dict[str, Any]) -> None:
    """The engine's rows, encoded column by column for the writer's process and decoded
    there, are the batch the rows' values convert to (or fail as they fail)."""
    from storage.dataset import columns_to_batch
    from storage.pipeline import decode_columns, encode_columns

    rows = _wire_rows()
    rows[1] = rows[1]._replace(**change)
    columns = list(zip(*rows, strict=True))
    try:
        want: Any = columns_to_batch(columns)
    except Exception as exc:  # the same failure is expected
        want = type(exc)
    try:
        got: Any = decode_columns(len(rows), encode_columns(rows))
    except Exception as exc:
        got = type(exc)
    if isinstance(want, type):
        assert got is want
    else:
        assert got.equals(want)
        assert got.to_pylist() == want.to_pylist()


def test_a_batch_of_many_dates_is_buffered_as_its_rows(tmp_path: Path) -> None:
    """``add_batch`` of the rows as they cross from the engine (the writer process) buffers
    what ``add`` (one process) buffers."""
    from metering.periods import PeriodGrid, as_period
    from storage.pipeline import decode_columns, encode_columns
    from storage.replay import DatasetWriter

    grid = PeriodGrid(as_period("day"), "Asia/Kolkata")
    rows = [r._replace(period_start=T0 + (i * 7 % 5) * 24 * HOUR, source_offset=i)
            for i, r in enumerate(_wire_rows() * 7)]
    one, three = (DatasetWriter(tmp_path, grid, lambda: "k") for _ in range(2))
    one.add(rows)
    one.add(rows[:4])
    three.add_batch(to_batch(rows))
    three.add_batch(decode_columns(4, encode_columns(rows[:4])))
    assert sorted(one.batches) == sorted(three.batches)
    assert len(three.batches) == 5
    for date, batches in one.batches.items():
        assert pa.Table.from_batches(batches).equals(pa.Table.from_batches(three.batches[date]))
