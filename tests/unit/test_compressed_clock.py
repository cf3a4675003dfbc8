"""The simulator's compressed clock (``simulate --speed``) and the demo's view of it (issue 16)."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agents.cli import main
from agents.demo import SimClock, Tally, _history_ms, _summary, write_chart
from metering.eventtime import parse_event_time
from metering.simulate.cloud import HOUR, Cloud, SimConfig
from metering.simulate.run import Pacer, relative_instant, stream

NOW = 1_795_000_000_000  # 2026-11-18T08:26:40Z, a whole second


class FakeClock:
    """A monotonic clock (seconds) the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_speed_paces_records_by_simulated_time() -> None:
    clock = FakeClock()
    pacer = Pacer(None, clock, speed=720, start_ms=NOW)
    assert pacer.delay(NOW) == 0.0
    assert pacer.delay(NOW + HOUR) == pytest.approx(5.0)  # one simulated hour per 5 s
    clock.t += 5.0
    assert pacer.delay(NOW + HOUR) == 0.0
    assert pacer.delay(NOW + 3 * HOUR) == pytest.approx(10.0)
    clock.t += 30.0  # late: nothing to wait for, never negative
    assert pacer.delay(NOW + 4 * HOUR) == 0.0
    assert pacer.sim_behind_s() == 0.0


def test_rate_caps_the_compressed_clock_which_then_falls_behind() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock, speed=3600, start_ms=NOW)
    delays = [pacer.delay(NOW) for _ in range(5)]  # five records at one simulated instant
    assert delays == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # at most 10 per second
    assert pacer.sim_behind_s() == pytest.approx(0.5)
    assert pacer.delay(NOW + 3600_000) == pytest.approx(1.0)  # one hour later: on time again
    assert pacer.sim_behind_s() == 0.0


def test_rate_alone_is_unchanged() -> None:
    clock = FakeClock()
    pacer = Pacer(4, clock)
    assert [pacer.delay() for _ in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    with pytest.raises(ValueError, match="simulated time"):
        Pacer(4, clock, speed=2).delay()
    with pytest.raises(ValueError, match="rate, a speed or both"):
        Pacer(None, clock)


def test_twelve_simulated_hours_ending_now_take_a_minute_and_stay_in_the_past() -> None:
    """The demo's clock: 12 h of a cloud replayed at 720x, durations kept, no future times."""
    until = NOW
    cfg = SimConfig(seed=3, accounts=40, start_ms=until - 12 * HOUR, until_ms=until)
    pacer = Pacer(None, FakeClock(), speed=720, start_ms=cfg.start_ms)
    last_due, event_times = 0.0, []
    for em in stream(Cloud(cfg)):
        last_due = pacer.delay(em.ts_ms)  # the fake clock stands still: the due time
        if em.category == "usage":
            text = orjson.loads(em.value).get("eventDateTime")
            if text:
                event_times.append(parse_event_time(text))
    assert 55.0 < last_due <= 60.0
    assert max(event_times) <= until  # never ahead of the wall clock at the start
    assert max(event_times) - min(event_times) > 6 * HOUR  # realistic durations, not seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [("now", NOW), ("NOW", NOW), ("now-12h", NOW - 12 * HOUR), ("now+30m", NOW + 1_800_000),
     ("now-2d", NOW - 48 * HOUR), ("now-90", NOW - 90_000), ("now - 1.5h", NOW - 5_400_000),
     ("2025-03-01T00:00:00Z", None)],
)
def test_relative_instants(text: str, expected: int | None) -> None:
    assert relative_instant(text, NOW + 999) == expected  # whole seconds


@pytest.mark.parametrize("text", ["now-", "now-xh", "now*2h", "now-nanh"])
def test_bad_relative_instants(text: str) -> None:
    with pytest.raises(ValueError, match="relative to now"):
        relative_instant(text, NOW)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--speed", "720", "--output", "x"], "--speed needs --to-kafka"),
        (["--speed", "0", "--to-kafka", "h:1"], "--speed must be positive"),
        (["--speed", "720", "--to-kafka", "h:1", "--truth", "t.json"], "--truth is not"),
        (["--start", "now-soon", "--to-kafka", "h:1", "--speed", "1"], "--start"),
    ],
)
def test_speed_bad_options_exit_2(argv: list[str], message: str,
                                  capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_demo_clock_ends_now() -> None:
    clock = SimClock.ending_now(NOW + 400, 12 * HOUR, 720)
    assert (clock.start_ms, clock.until_ms) == (NOW - 12 * HOUR, NOW)
    clock.started = 50.0
    assert clock.now_ms(55.0) == NOW - 11 * HOUR
    assert clock.now_ms(500.0) == NOW  # capped: the simulator stops at now
    ns = argparse.Namespace(history=None, duration=60.0, speed=720.0)
    assert _history_ms(ns) == 12 * HOUR
    ns.duration = 0.0
    assert _history_ms(ns) == 168 * HOUR
    ns.history = 2.5
    assert _history_ms(ns) == int(2.5 * HOUR)


def _row(iid: str, account: str, start: int, end: int, reason: str,
         type_name: str = "RUNNING_VM") -> dict[str, object]:
    return {"interval_id": iid, "account_id": account, "usage_type_name": type_name,
            "start": start, "end": end, "duration_ms": end - start,
            "raw_usage_hours": (end - start) / HOUR, "period_start": start - start % HOUR,
            "final": reason != "period", "close_reason": reason}


def test_live_view_counts_hours_per_account_and_period_cuts_once() -> None:
    t = Tally()
    h0 = NOW - NOW % HOUR
    rows = [_row("a", "acc-1", h0, h0 + HOUR, "period"),
            _row("b", "acc-2", h0 + HOUR // 2, h0 + HOUR, "period", "VOLUME"),
            _row("c", "acc-1", h0 + HOUR, h0 + HOUR + 600_000, "VM.STOP")]
    for row in [*rows, rows[0]]:  # a redelivered row counts once
        t.add_usage(orjson.dumps(row))
    t.add_reject(orjson.dumps({"reason": "invalid_json"}))
    screen = _summary(t, 1234, 56.0, 0, 10.0, h0 + 2 * HOUR, top=5)
    assert t.account_hours == {"acc-1": pytest.approx(1 + 1 / 6), "acc-2": 0.5}
    assert "3 intervals (1 final) for 2 accounts, 1.7 usage hours, 1 rejects" in screen
    assert "period cut landed" in screen
    assert "2 open resources, 1.5 h" in screen
    assert "acc-1" in screen
    assert "invalid_json 1" in screen
    again = _summary(t, 1234, 0.0, 0, 15.0, h0 + 2 * HOUR, top=5)
    assert "period cut landed" not in again  # shown once, as it lands
    assert "period cuts: 1 hour(s) cut" in again


def test_chart_is_a_png_of_hours_per_type_per_hour(tmp_path: Path) -> None:
    h0 = NOW - NOW % HOUR
    rows = [_row(f"i{k}", f"acc-{k % 3}", h0 + (k % 4) * HOUR, h0 + (k % 4 + 1) * HOUR,
                 "period" if k % 4 < 3 else "VM.STOP",
                 ["RUNNING_VM", "VOLUME", "IP_ADDRESS"][k % 3]) for k in range(24)]
    rows.append(rows[0])  # a duplicate in the archive counts once
    table = pa.Table.from_pylist(rows)
    day = tmp_path / "archive" / "usage_date=2026-11-18"
    day.mkdir(parents=True)
    pq.write_table(table, day / "part-0.parquet")
    out = tmp_path / "usage-by-type.png"
    hours, periods = write_chart(tmp_path / "archive", out)
    assert (hours, periods) == (pytest.approx(24.0), 4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
