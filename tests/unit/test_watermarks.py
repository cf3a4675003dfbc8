"""Issue 15, cases 2 and 6: one outlier event time, and a step of the host's wall clock.

Contract rule 4b (second half): a lane's watermark moves more than ``max_watermark_jump``
only once a later record of the lane, or in the worker the wall clock, confirms it. Rule 8:
idle advance is measured with a monotonic clock and one tick moves a watermark by at most
the idle time that passed, never beyond the wall clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from agents.cli import main
from metering.engine import NEVER, Engine, Policy
from metering.events import Source, UsageEvent
from metering.intervals import UsageInterval
from metering.simulate.truth import totals_from_intervals, truth_totals
from metering.watermarks import LaneReader, confirm_by_wall, idle_watermark, step
from storage.dataset import read_dataset

MIN = 60_000
HOUR = 3_600_000
JUMP = HOUR
T = 1_740_787_200_000  # 2025-03-01T00:00:00Z
MONTH = 31 * 24 * HOUR


def _usage(event: str, rid: str, t: int) -> UsageEvent:
    return UsageEvent(event, "acct-1", rid, "zone-1", t)


# ---------------------------------------------------------------------- the pure rule


def test_one_record_moves_a_watermark_by_at_most_the_jump() -> None:
    assert step(NEVER, None, T, 0, JUMP) == (T, None)  # the first record: nothing to compare
    assert step(T, None, T + JUMP, 1, JUMP) == (T + JUMP, None)  # exactly the jump: taken
    assert step(T, None, T + MONTH, 1, JUMP) == (T, (T + MONTH, 1))  # beyond: the suspect
    outlier = (T + MONTH, 1)
    assert step(T, outlier, T + MIN, 2, JUMP) == (T + MIN, outlier)  # normal records go on
    assert step(T, None, T + MONTH, 1, None) == (T + MONTH, None)  # no limit configured


def test_a_jump_confirmed_by_a_second_record_advances_the_watermark() -> None:
    watermark, suspect = step(T, None, T + 3 * HOUR, 5, JUMP)
    assert (watermark, suspect) == (T, (T + 3 * HOUR, 5))
    # the lane's next record is also beyond the jump: time really moved on, to the smaller
    assert step(watermark, suspect, T + 3 * HOUR + MIN, 6, JUMP) == (T + 3 * HOUR + MIN, None)
    # a far outlier confirmed by a genuine gap: the gap is taken, the outlier stays held
    assert step(T, (T + MONTH, 5), T + 2 * HOUR, 6, JUMP) == (T + 2 * HOUR, (T + MONTH, 5))
    # the outlier read again (redelivery after a crash or a rebalance) confirms nothing
    assert step(T, (T + MONTH, 5), T + MONTH, 5, JUMP) == (T, (T + MONTH, 5))
    # and in the engine
    meter = Engine(Policy(lateness_ms=0))
    meter.process(_usage("VM.START", "vm-1", T + MIN), Source("cs", 0, 0))
    meter.process(_usage("VM.START", "vm-2", T + 3 * HOUR), Source("cs", 0, 1))
    assert meter.watermark("cs/0") == T + MIN
    assert meter.lanes.clocks["cs/0"].suspect == (T + 3 * HOUR, 1)
    rows = meter.process(_usage("VM.STOP", "vm-1", T + 3 * HOUR + MIN), Source("cs", 0, 2))
    assert meter.watermark("cs/0") == T + 3 * HOUR + MIN
    assert meter.lanes.clocks["cs/0"].suspect is None
    rows += meter.advance().rows
    assert sum(r.duration_ms for r in rows if r.resource_id == "vm-1") == 3 * HOUR


def test_the_wall_clock_confirms_only_a_suspect_near_it() -> None:
    suspect = (T + 2 * HOUR, 3)
    assert confirm_by_wall(T, suspect, T + 2 * HOUR + MIN, JUMP) == (T + 2 * HOUR, None)
    assert confirm_by_wall(T, suspect, T + MONTH, JUMP) == (T, suspect)


def test_an_outlier_cuts_no_other_resource_in_the_meter() -> None:
    meter = Engine(Policy(lateness_ms=60_000))
    meter.process(_usage("VM.START", "vm-1", T + MIN), Source("cs", 0, 0))
    rows = meter.process(_usage("SNAPSHOT.CREATE", "snap-9", T + MONTH), Source("cs", 0, 1))
    rows += meter.advance().rows
    assert rows == []  # before: 744 hourly pieces of vm-1 up to the outlier
    assert "snap-9" in meter.open_entities  # the record itself is applied
    # redelivered (same offset): still no confirmation
    rows += meter.process(_usage("SNAPSHOT.CREATE", "snap-9", T + MONTH), Source("cs", 0, 1))
    rows += meter.advance().rows
    assert rows == []
    rows += meter.process(_usage("VM.STOP", "vm-1", T + 30 * MIN), Source("cs", 0, 2))
    rows += meter.advance().rows
    assert [(r.resource_id, r.duration_ms) for r in rows] == [("vm-1", 29 * MIN)]
    # replay's horizon without --until follows confirmed progress, not the outlier
    assert meter.finish().rows == []


# ---------------------------------------------------------------------- the worker's reader


def test_the_reader_never_announces_an_unconfirmed_outlier() -> None:
    reader = LaneReader(idle_since_mono_ms=0)
    reader.delivered(*reader.fold(list(enumerate([T, T + MIN, T + MONTH, T + 2 * MIN])),
                                  JUMP), JUMP, 10)
    assert (reader.newest_ms, reader.suspect) == (T + 2 * MIN, (T + MONTH, 2))
    # the lane read again from offset 1 after a rebalance: the outlier confirms nothing
    reader.delivered(*reader.fold([(1, T + MIN), (2, T + MONTH)], JUMP), JUMP, 15)
    assert (reader.newest_ms, reader.suspect) == (T + 2 * MIN, (T + MONTH, 2))
    # caught up, and the wall clock (a year later: a backlog replayed) does not confirm it
    assert reader.report(True, T + 365 * 24 * HOUR, 20, JUMP)[0] == T + 2 * MIN
    # a backlog being read: not caught up, nothing confirmed by the wall clock
    behind = LaneReader(idle_since_mono_ms=0)
    behind.delivered(*behind.fold([(0, T), (1, T + 2 * HOUR)], JUMP), JUMP, 10)
    assert behind.report(False, T + 2 * HOUR, 20, JUMP)[0] == T
    # a live lane resuming after a quiet period: caught up, near the wall clock: confirmed
    assert behind.report(True, T + 2 * HOUR + 500, 30, JUMP)[0] == T + 2 * HOUR
    # progress recovered after a restart skips an outlier among the records read back
    recovered = LaneReader()
    recovered.recovered([(7, T), (8, T + MONTH), (9, T + MIN)], JUMP)
    assert (recovered.newest_ms, recovered.suspect) == (T + MIN, (T + MONTH, 8))


def test_a_forward_step_of_the_wall_clock_is_no_idle_time() -> None:
    """Case 6: the worker host's clock steps 6 h forward while a 10-minute VM is open; the
    monotonic clock does not. Before: the tick's idle time was a wall-clock difference, the
    lane's watermark jumped 6 h, the VM was cut hourly up to it and billed about 6 h."""
    step_ms = 6 * HOUR
    meter = Engine(Policy(lateness_ms=60_000, idle_advance_ms=30_000,
                              wait_for_inputs=True))
    reader = LaneReader(idle_since_mono_ms=0)
    rows: list[UsageInterval] = []

    def forward(event: str, t: int, offset: int, mono: int, wall: int) -> None:
        reader.delivered(*reader.fold([(offset, t)], JUMP), JUMP, mono)
        rows.extend(meter.process(_usage(event, "vm-1", t), Source("cs", 0, offset), wall))

    def wall_at(mono: int) -> int:  # the host clock steps 6 h forward after 5 minutes
        return T + 5 * MIN + mono + (step_ms if mono >= 5 * MIN else 0)

    forward("VM.START", T + 5 * MIN, 0, 0, wall_at(0))
    for mono in range(10_000, 10 * MIN, 10_000):  # a tick every 10 s, caught up
        wall = wall_at(mono)
        report = reader.report(True, wall, mono, JUMP)
        meter.report({"cs/0": report}, {"cs": 1}, wall)
        rows.extend(meter.advance().rows)
        # one tick never moves the watermark by more than the monotonic time that passed
        assert meter.watermark("cs/0") <= T + 5 * MIN + mono
    forward("VM.STOP", T + 15 * MIN, 1, 10 * MIN, wall_at(10 * MIN))
    rows.extend(meter.advance().rows)
    assert sum(r.duration_ms for r in rows) == 10 * MIN  # before: 5.92 h


def test_idle_advance_never_passes_the_wall_clock() -> None:
    assert idle_watermark(T, 10_000, 30_000, T + HOUR) is None  # not idle long enough
    assert idle_watermark(T, 40_000, 30_000, T + HOUR) == T + 10_000
    assert idle_watermark(T, 2 * HOUR, 30_000, T + MIN) == T + MIN  # capped by the wall clock


# ---------------------------------------------------------------------- replay end to end


def _marker(t_iso: str) -> bytes:
    """An ACCOUNT.CREATE of an account without resources: moves event time, bills nothing."""
    return json.dumps({"eventDateTime": t_iso, "event": "ACCOUNT.CREATE",
                       "status": "Completed", "entity": "Account",
                       "entityuuid": "00000000-0000-4000-8000-0000000000aa", "user": "u",
                       "account": "root", "description": "Successfully completed",
                       "Domain": "00000000-0000-4000-8000-0000000000dd"}).encode()


def _replay(trace: Path, out: Path) -> list[dict[str, object]]:
    assert main(["replay", str(trace), "--output", str(out), "--no-progress"]) == 0
    rows = read_dataset(out).to_pylist()
    for r in rows:
        r["duration_ms"] = int(r["duration_ms"])
    return rows


def test_replay_with_one_snapshot_dated_a_month_ahead_equals_the_truth(tmp_path: Path) -> None:
    """Case 2: one ``SNAPSHOT.CREATE`` dated a month after the rest of a 2-day trace. Before:
    replay's horizon (and the watermark) followed it, every open resource was cut hourly up
    to it (269 857 intervals, 269 406 h against a true 10 278 h on this trace)."""
    trace, truth_file = tmp_path / "trace.jsonl", tmp_path / "truth.json"
    assert main(["simulate", "--accounts", "30", "--days", "2", "--seed", "1",
                 "--format", "jsonl", "--output", str(trace), "--truth", str(truth_file),
                 "--no-progress"]) == 0
    truth = orjson.loads(truth_file.read_bytes())
    assert truth["until"] == "2025-03-03T00:00:00Z"
    lines = trace.read_bytes().splitlines()
    # without --until the horizon is the last boundary at or before the newest event: two
    # records at the truth's end put it there (two, so the step to them is confirmed)
    end = [_marker("2025-03-03 00:00:00 +0000")] * 2
    snapshot = json.loads(next(line for line in lines if b"SNAPSHOT.CREATE" in line))
    snapshot.update(id="00000000-0000-4000-8000-00000000beef",
                    eventDateTime="2025-04-01 12:00:00 +0000")  # a month ahead, in the past
    middle = len(lines) // 2
    plain, hostile = tmp_path / "plain.jsonl", tmp_path / "hostile.jsonl"
    plain.write_bytes(b"\n".join(lines + end) + b"\n")
    hostile.write_bytes(b"\n".join([*lines[:middle], json.dumps(snapshot).encode(),
                                    *lines[middle:], *end]) + b"\n")

    want = truth_totals(truth)
    base = _replay(plain, tmp_path / "plain")
    assert totals_from_intervals(base) == want
    rows = _replay(hostile, tmp_path / "hostile")
    got = totals_from_intervals(r for r in rows if r["resource_id"] != snapshot["id"])
    diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
            if got.get(k) != want.get(k)}
    assert not diff, f"{len(diff)} resources differ from the truth, e.g. {list(diff.items())[:3]}"
    assert len(rows) == len(base)  # the snapshot opens after the horizon: no row of its own
